"""sweep-report: power-law fits recover a known law; table, JSON and plots are written."""

import json

import numpy as np

from sleepjax.sweep import report as sweep_report
from sleepjax.data import sampling


def _fake_sweep(root, alpha=0.3, c=1.0):
  rng = np.random.default_rng(0)
  for i, n in enumerate([1e4, 3e4, 1e5, 3e5, 1e6]):
    for m in (2, 3, 5):
      run = root / "runs" / f"r{i}-m{m}"
      run.mkdir(parents=True)
      loss = 5 * (n / 1e4) ** -alpha + c + 0.05 * (5 - m) + rng.normal(0, 0.005)
      (run / "result.json").write_text(json.dumps(dict(
          val_loss=loss, params=n, flops=n * 1e6 * m, train_subjects=100, modality_count=m,
          seed=0, step=100, tokens=1000)))
      if m == 5:
        (run / "eval").mkdir()
        (run / "eval" / "report.json").write_text(json.dumps({"pretrained": {"macro_f1": 0.5}}))


def test_report_fits_a_known_power_law_with_intervals(tmp_path):
  _fake_sweep(tmp_path)
  result = sweep_report.report(tmp_path, n_boot=50, log=lambda *_: None)
  fit = result["fits"]["params"]
  assert fit["points"] == 5 and abs(fit["alpha"] - 0.3) < 0.03 and abs(fit["c"] - 1.0) < 0.2
  assert fit["alpha_ci"][0] <= fit["alpha"] <= fit["alpha_ci"][1]
  assert "alpha" in result["fits"]["modalities"]  # 3 counts: fitted
  assert "note" in result["fits"]["data"]  # one data size: no fit, said so
  out = tmp_path / "report"
  md = (out / "report.md").read_text()
  assert "| params | 5 |" in md and "r4-m5" in md and "0.5" in md
  assert json.loads((out / "report.json").read_text())["fits"]["params"]["alpha"] == fit["alpha"]
  for axis in ("params", "compute", "modalities"):
    assert (out / f"{axis}.png").read_bytes()[:4] == b"\x89PNG"


def test_subject_fraction_keeps_a_nested_fixed_subset_of_subjects():
  subjects = [f"sub-{i}" for i in range(10)]
  manifest = {"splits": {"train": {"recordings": [f"rec-{i}" for i in range(10)]}},
              "recordings": {f"rec-{i}": {"subject": subjects[i], "segments": 3} for i in range(10)}}
  half = sampling.subject_subset(manifest, "train", 0.5)
  fifth = sampling.subject_subset(manifest, "train", 0.2)
  assert half.shape == (30,) and half.sum() == 15 and fifth.sum() == 6
  assert (half | fifth).sum() == half.sum()  # smaller fractions are subsets of larger ones
  assert (sampling.subject_subset(manifest, "train", 0.5) == half).all()
  assert sampling.subject_subset(manifest, "train", 0.01).sum() == 3  # at least one subject


def test_held_out_site_curve_against_training_subjects(tmp_path):
  """The self-supervised scaling curve (configs/ssl.py:scaling): the `site` task's fewest-label
  macro-F1, pretrained and random init, grouped by training subjects over seeds."""
  for n, seed, pre, rnd in ((5, 0, 0.50, 0.45), (5, 1, 0.60, 0.55), (18, 0, 0.70, 0.50)):
    run = tmp_path / "runs" / f"n{n}-s{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(dict(
        val_loss=1.0, params=1e5, flops=1e12, train_subjects=n, modality_count=7, seed=seed)))
    curve = {f: {"macro_f1": {"mean": v, "sd": 0.0}} for f, v in (("0.01", 0), ("1.0", 0.9))}
    site = {"pretrained": {"curve": {**curve, "0.01": {"macro_f1": {"mean": pre, "sd": 0.1}}}},
            "random_init": {"curve": {**curve, "0.01": {"macro_f1": {"mean": rnd, "sd": 0.1}}}}}
    (run / "eval" / "report.json").write_text(json.dumps({"tasks": {"site": site}}))
  result = sweep_report.report(tmp_path, n_boot=10, log=lambda *_: None)
  five, eighteen = result["site_curve"]
  assert (five["train_subjects"], five["runs"], five["labels"]) == (5, 2, 0.01)
  assert np.isclose(five["site_macro_f1"], 0.55) and np.isclose(five["site_random_macro_f1"], 0.50)
  assert np.isclose(five["site_macro_f1_sd"], np.std([0.5, 0.6], ddof=1))
  assert eighteen["runs"] == 1 and np.isclose(eighteen["site_macro_f1"], 0.70)
  md = (tmp_path / "report" / "report.md").read_text()
  assert "| 5 | 2 | 0.550 ± 0.071 | 0.500 ± 0.071 | +0.050 |" in md
