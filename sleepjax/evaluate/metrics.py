"""Evaluation metrics (numpy only; class labels < 0 are ignored everywhere).

Classification: accuracy, Cohen's kappa, macro-F1, per-class F1, confusion.  Events: event-level F1
over per-second rasters.  Regression: MAE, Pearson.  Ranking: AUROC, retrieval recall@k.  Text:
BLEU, ROUGE-L, numeric faithfulness of a caption against an epoch's features.
"""

import collections
import math
import re

import numpy as np


# ------------------------------------------------------------------------------ classification
def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
  """[true, predicted] counts over the labelled entries."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  keep = y_true >= 0
  cm_YxY = np.zeros((n_classes, n_classes), np.int64)
  np.add.at(cm_YxY, (y_true[keep], y_pred[keep]), 1)
  return cm_YxY


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
  """F1 of each class; NaN for a class neither present nor predicted."""
  cm = confusion(y_true, y_pred, n_classes)
  tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  denom = support + predicted
  return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
  """Mean F1 over classes present in y_true or y_pred."""
  return float(np.nanmean(per_class_f1(y_true, y_pred, n_classes)))


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
  cm = confusion(y_true, y_pred, n_classes).astype(np.float64)
  n = cm.sum()
  observed = np.trace(cm) / n
  expected = (cm.sum(0) * cm.sum(1)).sum() / n**2
  return float((observed - expected) / (1 - expected)) if expected < 1 else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  keep = y_true >= 0
  return float((y_true[keep] == y_pred[keep]).mean())


def staging(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> dict:
  """The staging metric set: accuracy, kappa, macro-F1, per-stage F1, confusion, epochs."""
  k = len(names)
  f1 = per_class_f1(y_true, y_pred, k)
  return {"accuracy": accuracy(y_true, y_pred), "kappa": cohen_kappa(y_true, y_pred, k),
          "macro_f1": macro_f1(y_true, y_pred, k),
          "per_stage_f1": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, f1)},
          "confusion": confusion(y_true, y_pred, k).tolist(),
          "epochs": int((np.asarray(y_true) >= 0).sum())}


# ------------------------------------------------------------------------------------- events
def event_intervals(raster: np.ndarray) -> list[tuple[int, int]]:
  """Runs of True in a 1-D boolean per-second raster as half-open [start, stop) intervals."""
  x = np.concatenate([[0], np.asarray(raster, np.int8), [0]])
  edges = np.flatnonzero(np.diff(x))
  return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
  inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def event_f1(true_raster: np.ndarray, pred_raster: np.ndarray, *, min_iou: float = 0.2) -> dict:
  """Event-level precision/recall/F1: events are runs of positive seconds; a predicted event
  matches a true event (one-to-one, greedy by overlap) when their intersection-over-union is at
  least `min_iou`. Rasters are 1-D per-second booleans (a night or a concatenation of nights;
  callers keep nights apart with a False gap)."""
  true_ev, pred_ev = event_intervals(true_raster), event_intervals(pred_raster)
  pairs = sorted(((_iou(t, p), i, j) for i, t in enumerate(true_ev) for j, p in enumerate(pred_ev)
                  if min(t[1], p[1]) > max(t[0], p[0])), reverse=True)
  used_t, used_p, tp = set(), set(), 0
  for iou, i, j in pairs:
    if iou >= min_iou and i not in used_t and j not in used_p:
      used_t.add(i)
      used_p.add(j)
      tp += 1
  precision = tp / len(pred_ev) if pred_ev else float(not true_ev)
  recall = tp / len(true_ev) if true_ev else float(not pred_ev)
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1, "true_events": len(true_ev),
          "predicted_events": len(pred_ev), "matched": tp}


# ---------------------------------------------------------------------------- regression/ranking
def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
  keep = np.isfinite(y_true)
  return float(np.abs(y_true[keep] - y_pred[keep]).mean())


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
  denom = math.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else float("nan")


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
  """Area under the ROC curve = P(score of a random positive > a random negative), ties count 1/2."""
  y_true, score = np.asarray(y_true), np.asarray(score, float)
  keep = y_true >= 0
  y_true, score = y_true[keep], score[keep]
  pos, neg = score[y_true == 1], score[y_true == 0]
  if not len(pos) or not len(neg):
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return float(greater / (len(pos) * len(neg)))


def recall_at_k(sim_QxN: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Query i's match is candidate i; R@k = fraction of queries whose match ranks in the top k
  (ties count against the query: the rank is 1 + the number of candidates scoring >= the match,
  excluding the match itself)."""
  sim = np.asarray(sim_QxN, float)
  match = np.diag(sim)
  rank = (sim >= match[:, None]).sum(1)  # 1-based; the match itself counts once
  return {f"R@{k}": float((rank <= k).mean()) for k in ks}


def recall_at_k_sets(sim_QxN: np.ndarray, correct_QxN: np.ndarray, ks=(1, 5, 10)) -> dict:
  """R@k when several candidates are right (e.g. identical caption texts): a query's rank is 1 +
  the number of wrong candidates scoring >= its best right one (queries with no right candidate
  are skipped). With one right candidate per query this is `recall_at_k`."""
  sim, correct = np.asarray(sim_QxN, float), np.asarray(correct_QxN, bool)
  has = correct.any(1)
  sim, correct = sim[has], correct[has]
  best = np.where(correct, sim, -np.inf).max(1)
  rank = 1 + ((sim >= best[:, None]) & ~correct).sum(1)
  return {f"R@{k}": float((rank <= k).mean()) if len(rank) else float("nan") for k in ks}


def retrieval(a_NxD: np.ndarray, b_NxD: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Cosine-similarity retrieval both ways between paired rows of a and b."""
  a = a_NxD / (np.linalg.norm(a_NxD, axis=-1, keepdims=True) + 1e-9)
  b = b_NxD / (np.linalg.norm(b_NxD, axis=-1, keepdims=True) + 1e-9)
  sim = a @ b.T
  return {"a_to_b": recall_at_k(sim, ks), "b_to_a": recall_at_k(sim.T, ks), "n": len(a)}


# ----------------------------------------------------------------------------------------- text
def _words(text: str) -> list[str]:
  return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]", text.lower())


def bleu(candidate: str, references: list[str], max_n: int = 4) -> float:
  """Sentence BLEU (Papineni et al.): geometric mean of clipped n-gram precisions n = 1..max_n with
  add-one smoothing for n > 1 (Lin & Och 2004), times the brevity penalty against the closest
  reference length."""
  cand = _words(candidate)
  refs = [_words(r) for r in references]
  if not cand:
    return 0.0
  log_p = 0.0
  for n in range(1, max_n + 1):
    grams = collections.Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
    best = collections.Counter()
    for r in refs:
      best |= collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
    clipped = sum(min(c, best[g]) for g, c in grams.items())
    total = sum(grams.values())
    if n == 1:
      if clipped == 0:
        return 0.0
      log_p += math.log(clipped / total)
    else:
      log_p += math.log((clipped + 1) / (total + 1))
  closest = min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
  bp = 1.0 if len(cand) > closest else math.exp(1 - closest / len(cand))
  return bp * math.exp(log_p / max_n)


def rouge_l(candidate: str, reference: str) -> float:
  """ROUGE-L F1 (beta = 1) from the longest common subsequence of words."""
  c, r = _words(candidate), _words(reference)
  if not c or not r:
    return 0.0
  dp = np.zeros((len(c) + 1, len(r) + 1), np.int32)
  for i, a in enumerate(c):
    for j, b in enumerate(r):
      dp[i + 1, j + 1] = dp[i, j] + 1 if a == b else max(dp[i, j + 1], dp[i + 1, j])
  lcs = int(dp[-1, -1])
  if lcs == 0:
    return 0.0
  p, rec = lcs / len(c), lcs / len(r)
  return 2 * p * rec / (p + rec)


# numbers, not digits inside words ("SpO2") or exponents ("uV^2")
NUMBER = re.compile(r"(?<![\w.^])-?\d+(?:\.\d+)?")


def numeric_faithfulness(caption: str, truths: list[float]) -> float:
  """Fraction of the numbers in `caption` that agree with some true value at the caption's
  precision: "12.3" agrees with x when round(x, 1) == 12.3, "12" when round(x) == 12. `truths` are
  the epoch's feature values (NaN ignored). NaN when the caption holds no number."""
  found = NUMBER.findall(caption)
  if not found:
    return float("nan")
  values = [t for t in truths if t is not None and np.isfinite(t)]
  ok = 0
  for s in found:
    decimals = len(s.split(".")[1]) if "." in s else 0
    x = float(s)
    ok += any(abs(round(t, decimals) - x) <= 1e-6 * max(1.0, abs(x)) for t in values)
  return ok / len(found)


def mean_sd(values) -> dict:
  """{"mean", "sd", "n", "values"} over seeds (sd with ddof=1; 0 for one value)."""
  v = np.asarray([x for x in values if x is not None], float)
  return {"mean": float(v.mean()) if len(v) else float("nan"),
          "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v)),
          "values": [float(x) for x in v]}


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
  """Mean recall over the classes present in y_true (labels < 0 ignored): chance is 1 / classes."""
  cm = confusion(y_true, y_pred, n_classes)
  support = cm.sum(1)
  return float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))
