"""Evaluation metrics against values computed by hand (see the comments)."""

import numpy as np
import pytest

from sleepjax.evaluate import metrics
from sleepjax.evaluate.probes import fit_linear_probe, fit_ridge, label_fraction


def test_macro_f1_and_kappa_by_hand():
  y_true = np.array([0, 0, 1, 1, 2, 2, -1])
  y_pred = np.array([0, 1, 1, 1, 2, 0, 2])  # the -1 label is ignored
  # per-class F1: c0 2*1/(2+2)=0.5, c1 2*2/(2+3)=0.8, c2 2*1/(2+1)=2/3
  np.testing.assert_allclose(metrics.macro_f1(y_true, y_pred, 5), (0.5 + 0.8 + 2 / 3) / 3)
  # observed 4/6; expected = (2*2 + 2*3 + 2*1) / 36 = 1/3 -> kappa 0.5
  np.testing.assert_allclose(metrics.cohen_kappa(y_true, y_pred, 5), 0.5)
  assert metrics.cohen_kappa(y_true, np.where(y_true < 0, 0, y_true), 5) == 1.0
  s = metrics.staging(y_true, y_pred, ("W", "N1", "N2", "N3", "REM"))
  assert s["per_stage_f1"] == {"W": 0.5, "N1": 0.8, "N2": pytest.approx(2 / 3), "N3": None,
                               "REM": None}
  assert s["confusion"][0] == [1, 1, 0, 0, 0] and s["epochs"] == 6
  np.testing.assert_allclose(s["accuracy"], 4 / 6)


def test_event_f1_by_hand():
  true = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0], bool)  # events [1,4) and [6,8)
  pred = np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 1], bool)  # events [1,3) and [9,10)
  assert metrics.event_intervals(true) == [(1, 4), (6, 8)]
  # [1,3) overlaps [1,4) with IoU 2/3 -> one match; precision 1/2, recall 1/2
  r = metrics.event_f1(true, pred, min_iou=0.2)
  assert (r["matched"], r["precision"], r["recall"], r["f1"]) == (1, 0.5, 0.5, 0.5)
  # IoU 2/3 < 0.7: no match at a stricter threshold
  assert metrics.event_f1(true, pred, min_iou=0.7)["f1"] == 0.0
  # one long prediction covering both true events matches only one of them
  r = metrics.event_f1(true, np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool), min_iou=0.2)
  assert (r["matched"], r["precision"], r["recall"]) == (1, 1.0, 0.5)
  assert metrics.event_f1(np.zeros(5, bool), np.zeros(5, bool))["f1"] == 1.0


def test_regression_and_ranking_by_hand():
  # |3 - 5| / 3 = 2/3; Pearson([1,2,3],[1,2,5]) = 4 / sqrt(2 * 78/9) = 12 / sqrt(156)
  np.testing.assert_allclose(metrics.mae([1, 2, 3, np.nan], [1, 2, 5, 9]), 2 / 3)
  np.testing.assert_allclose(metrics.pearson([1, 2, 3], [1, 2, 5]), 12 / np.sqrt(156))
  # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered; a tie counts 1/2
  assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
  assert metrics.auroc([0, 1, -1], [0.5, 0.5, 0.9]) == 0.5
  # query 1's match (0.5) is beaten by candidate 0 (0.9): rank 2
  sim = np.array([[1.0, 0.0, 0.0], [0.9, 0.5, 0.0], [0.0, 0.0, 1.0]])
  assert metrics.recall_at_k(sim, (1, 2)) == {"R@1": 2 / 3, "R@2": 1.0}
  # sets: query 0's right candidates {0, 2}; its best right one (0.7) is beaten by candidate 1
  # (0.8) only -> rank 2. Query 1's only right candidate (0.5) is beaten by nothing -> rank 1.
  # Query 2 has no right candidate: skipped. One right candidate each equals recall_at_k.
  sim2 = np.array([[0.6, 0.8, 0.7], [0.1, 0.5, 0.4], [0.3, 0.2, 0.1]])
  right = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], bool)
  assert metrics.recall_at_k_sets(sim2, right, (1, 2)) == {"R@1": 0.5, "R@2": 1.0}
  assert metrics.recall_at_k_sets(sim, np.eye(3, dtype=bool), (1, 2)) == metrics.recall_at_k(
      sim, (1, 2))
  a = np.eye(4)
  r = metrics.retrieval(a, 3 * a)
  assert r["a_to_b"]["R@1"] == 1.0 and r["b_to_a"]["R@1"] == 1.0 and r["n"] == 4


def test_text_metrics_by_hand():
  ref = "the cat sat on the mat"
  assert metrics.bleu(ref, [ref]) == pytest.approx(1.0)
  # all n-gram precisions 1 (n=4 smoothed 1/1), brevity penalty exp(1 - 6/3)
  assert metrics.bleu("the cat sat", [ref]) == pytest.approx(np.exp(-1))
  assert metrics.bleu("dog", [ref]) == 0.0
  # LCS 3: precision 1, recall 1/2 -> F1 2/3
  assert metrics.rouge_l("the cat sat", ref) == pytest.approx(2 / 3)
  # 61 <- 60.6 (round), 95.2 <- 95.24, 3 has no source; the 2s in "SpO2" and "uV^2" are no numbers
  caption = "Heart rate 61 bpm, SpO2 95.2 %, 3 arousals, power 7 uV^2."
  truths = [60.6, 95.24, 2.0, 7.4, np.nan]
  assert metrics.numeric_faithfulness(caption, truths) == pytest.approx(3 / 4)
  assert np.isnan(metrics.numeric_faithfulness("Stage N2 sleep.", [1.0]))
  assert metrics.mean_sd([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(np.sqrt(2)), "n": 2,
                                         "values": [1.0, 3.0]}


def test_probe_learns_a_separable_problem():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 16)) * 3
  y = rng.integers(0, 5, 500)
  x = centers[y] + rng.normal(size=(500, 16))
  predict = fit_linear_probe(x[:400], y[:400], 5, steps=200, lr=0.05, l2=1e-3)
  assert metrics.accuracy(y[400:], predict(x[400:])) > 0.95


def test_probe_fits_of_an_evaluation_share_compiled_programs():
  """Fits on 100, 110 and 120 labelled rows (label fractions and seeds of one evaluation) and
  three regularisations compile one program (zero-weight padding rows, data as arguments: the
  former fit compiled a program per call with the data inside); padding changes no prediction."""
  import jax  # pylint: disable=g-import-not-at-top
  from sleepjax.evaluate import probes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 16)) * 3
  y = rng.integers(0, 5, 200)
  x = centers[y] + rng.normal(size=(200, 16))
  lowered = []
  listen = lambda event, _, fun_name="", **__: lowered.append(fun_name) if event.endswith(
      "jaxpr_to_mlir_module_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    fits = [fit_linear_probe(x[:n], y[:n], 5, steps=50, lr=0.05, l2=l2)
            for n in (100, 110, 120) for l2 in (1e-4, 1e-3, 1e-2)]
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert lowered.count("jit(_fit_softmax)") == 1, lowered
  # the same fit on 120 rows, unpadded: the same predictions
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(probes, "_rows", lambda n: n)
    plain = fit_linear_probe(x[:120], y[:120], 5, steps=50, lr=0.05, l2=1e-2)
  np.testing.assert_array_equal(fits[-1](x[120:]), plain(x[120:]))
  np.testing.assert_allclose(fits[-1].proba(x[120:]), plain.proba(x[120:]), atol=1e-5)


def test_ridge_and_label_fractions():
  x = np.array([[0.0], [1.0], [2.0], [3.0]])
  np.testing.assert_allclose(fit_ridge(x, 2 * x[:, 0] + 1, 1e-9)(np.array([[4.0]])), [9.0])
  y = np.array([0] * 90 + [1] * 9 + [2] + [-1] * 5)
  idx = label_fraction(y, 0.01, seed=0, n_classes=5)
  # 1 % of 100 labelled = 1 epoch, plus one of every class the draw missed: classes 0, 1, 2
  assert sorted(set(y[idx].tolist())) == [0, 1, 2] and len(idx) == 3
  assert (label_fraction(y, 0.01, 0, 5) == idx).all()
  assert len(label_fraction(y, 1.0, 0, 5)) == 100
