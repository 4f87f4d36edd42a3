import numpy as np

from sleepjax.evaluate import metrics
from sleepjax.evaluate.probes import fit_linear_probe


def test_macro_f1_and_kappa_by_hand():
  y_true = np.array([0, 0, 1, 1, 2, 2, -1])
  y_pred = np.array([0, 1, 1, 1, 2, 0, 2])  # the -1 label is ignored
  # per-class F1: c0 2*1/(2+2)=0.5, c1 2*2/(2+3)=0.8, c2 2*1/(2+1)=2/3
  np.testing.assert_allclose(metrics.macro_f1(y_true, y_pred, 5), (0.5 + 0.8 + 2 / 3) / 3)
  # observed 4/6; expected = (2*2 + 2*3 + 2*1) / 36 = 1/3 -> kappa 0.5
  np.testing.assert_allclose(metrics.cohen_kappa(y_true, y_pred, 5), 0.5)
  assert metrics.cohen_kappa(y_true, np.where(y_true < 0, 0, y_true), 5) == 1.0


def test_probe_learns_a_separable_problem():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 16)) * 3
  y = rng.integers(0, 5, 500)
  x = centers[y] + rng.normal(size=(500, 16))
  predict = fit_linear_probe(x[:400], y[:400], 5, steps=200, lr=0.05, l2=1e-3)
  assert metrics.accuracy(y[400:], predict(x[400:])) > 0.95
