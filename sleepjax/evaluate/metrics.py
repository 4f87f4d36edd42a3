"""Classification metrics for sleep staging (numpy; labels < 0 are ignored)."""

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
  keep = y_true >= 0
  cm_KxK = np.zeros((n_classes, n_classes), np.int64)
  np.add.at(cm_KxK, (y_true[keep], y_pred[keep]), 1)
  return cm_KxK


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
  """Mean F1 over classes present in y_true or y_pred."""
  cm = confusion(y_true, y_pred, n_classes)
  tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  used = (support + predicted) > 0
  f1 = 2 * tp / np.maximum(support + predicted, 1)
  return float(f1[used].mean())


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
  cm = confusion(y_true, y_pred, n_classes).astype(np.float64)
  n = cm.sum()
  observed = np.trace(cm) / n
  expected = (cm.sum(0) * cm.sum(1)).sum() / n**2
  return float((observed - expected) / (1 - expected)) if expected < 1 else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  keep = y_true >= 0
  return float((y_true[keep] == y_pred[keep]).mean())
