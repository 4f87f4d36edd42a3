"""Evaluation tasks on hand-made embedding tables whose answers are known exactly."""

import numpy as np
import pytest

from sleepjax.configs import common
from sleepjax.evaluate import reports, tasks

E, D = 12, 8
STAGE_CYCLE = np.array([0, 1, 2, 2, 3, 3, 2, 4, 4, 2, 1, 0])  # every stage in each segment
MODS = ["eeg", "ecg", "spo2"]
SUBJECTS = {"train": [1, 2, 3, 4], "val": [5], "test": [6, 7]}


def _manifest():
  recs = {f"r{i}": {"subject": f"s{i}", "site": "site-a" if i % 2 else "site-b",
                    "night_summary": {"ahi": 2.0 * (30 + 5 * i) + 1}} for i in range(1, 8)}
  return {"sites": ["site-a", "site-b"], "recordings": recs,
          "splits": {s: {"subjects": [f"s{i}" for i in ids], "recordings": [f"r{i}" for i in ids]}
                     for s, ids in SUBJECTS.items()}}


def _table(split: str, rem_as_n2: bool = False, night_dims: bool = True) -> dict:
  """Two segments per recording; epoch embedding = 3 x one-hot(stage) + night dims (age, sex)."""
  rows = [(i, seg) for i in SUBJECTS[split] for seg in range(2)]
  R = len(rows)
  stage = np.tile(STAGE_CYCLE, (R, 1))
  emb_stage = np.where(stage == 4, 2, stage) if rem_as_n2 else stage
  epoch = np.zeros((R, E, D), np.float32)
  epoch[np.arange(R)[:, None], np.arange(E)[None], emb_stage] = 3.0
  age = np.array([30.0 + 5 * i for i, _ in rows], np.float32)
  sex = np.array([i % 2 for i, _ in rows])
  if night_dims:
    epoch[..., 5] = age[:, None] / 10
    epoch[..., 6] = sex[:, None]
  events = np.zeros((R, E, 30), np.uint8)
  events[stage == 3] = 1  # apnea (bit 0) over every second of N3 epochs
  rng = np.random.default_rng(R)
  z = rng.normal(size=(R, 1, E, 4)).repeat(len(MODS), 1)  # the same point in every modality
  return {"epoch": epoch, "stage": stage, "events": events, "epoch_index": np.tile(
      np.arange(E), (R, 1)) + E * np.array([s for _, s in rows])[:, None],
          "age": age, "sex": sex, "site": np.array([0 if i % 2 else 1 for i, _ in rows]),
          "recording": np.array([i - 1 for i, _ in rows]), "z": z,
          "present": np.ones((R, len(MODS), E), bool)}


def _context(night_dims=True, **eval_overrides):
  config = common.get_config()
  config.eval.update(dict(
      probe_steps=300, probe_lr=0.05, probe_l2=1e-4, probe_l2_grid=(1e-4,), seeds=(0, 1),
      fractions=(0.01, 1.0), ridge_alphas=(1e-6,), event_kinds=("apnea",),
      robustness_max_subsets=32, **eval_overrides))
  calls = []

  def embed(encoder, split, subset):
    calls.append((encoder, split, subset))
    return _table(split, rem_as_n2=(split == "test" and encoder == "random_init"),
                  night_dims=night_dims)
  ctx = tasks.Context(config, _manifest(), MODS, ["pretrained", "random_init"], embed)
  return ctx, calls


def test_staging_exact_and_a_known_confusion():
  ctx, calls = _context()
  out = tasks.staging(ctx)
  p = out["pretrained"]
  assert (p["accuracy"], p["kappa"], p["macro_f1"]) == (1.0, 1.0, 1.0)
  assert p["hypnogram"]["recording"] == "r6" and p["hypnogram"]["true"] == p["hypnogram"]["pred"]
  assert p["hypnogram"]["true"] == STAGE_CYCLE.tolist() * 2
  # random_init's test embeddings put REM on the N2 prototype: every REM epoch is called N2.
  r = out["random_init"]
  n = np.bincount(STAGE_CYCLE, minlength=5) * 4  # 4 test segments
  assert r["confusion"][4] == [0, 0, int(n[4]), 0, 0]
  f1_n2 = 2 * n[2] / (2 * n[2] + n[4])  # precision n2/(n2+nrem), recall 1
  assert r["per_stage_f1"] == {"W": 1.0, "N1": 1.0, "N2": pytest.approx(f1_n2), "N3": 1.0,
                               "REM": 0.0}
  assert r["macro_f1"] == pytest.approx((3 + f1_n2) / 5)
  assert r["accuracy"] == pytest.approx(1 - n[4] / n.sum())
  assert len(set(calls)) == 6  # each (encoder, split) embedded once


def test_few_shot_and_site_split():
  ctx, _ = _context(night_dims=False)  # 5 labelled epochs cannot pin down age dimensions
  fs = tasks.few_shot(ctx)["pretrained"]
  # 1 % of 96 training epochs = 1 epoch + one per missing stage = 5 labelled epochs
  assert fs["0.01"]["labelled_epochs"]["mean"] == 5 and fs["0.01"]["macro_f1"]["n"] == 2
  assert fs["0.01"]["macro_f1"]["mean"] == 1.0 and fs["1.0"]["labelled_epochs"]["mean"] == 96
  site = tasks.site(ctx)
  assert site["train_sites"] == ["site-a"] and site["test_sites"] == ["site-b"]
  assert site["pretrained"]["train_subjects"] == ["s1", "s3"]
  assert site["pretrained"]["test_subjects"] == ["s6"]
  assert site["pretrained"]["curve"]["1.0"]["macro_f1"]["mean"] == 1.0
  with pytest.raises(ValueError, match="both sides"):
    tasks.site(_context(train_sites=("site-a",), test_sites=("site-a",))[0])
  with pytest.raises(ValueError, match=r"\['s1'\]"):
    tasks.check_disjoint({"s1", "s2"}, {"s1"}, "x")


def test_robustness_subsets():
  assert len(tasks.subsets(MODS, 32, 0)) == 7
  capped = tasks.subsets(["a", "b", "c", "d", "e"], 8, 0)  # 31 subsets, cap 8
  assert len(capped) == 8 and ("a", "b", "c", "d", "e") in capped
  assert all((m,) in capped for m in "abcde") and capped == tasks.subsets(list("abcde"), 8, 0)
  ctx, calls = _context()
  out = tasks.robustness(ctx)
  assert out["total_subsets"] == 7 and len(out["pretrained"]) == 7
  assert all(r["macro_f1"] == 1.0 for r in out["pretrained"])
  assert ("pretrained", "test", ("ecg", "spo2")) in calls


def test_events_clinical_retrieval():
  ctx, _ = _context()
  ev = tasks.events(ctx)["pretrained"]["apnea"]
  # N3 runs: epochs 4-5 of each segment -> one 60-s event per segment, 4 test segments
  assert (ev["true_events"], ev["predicted_events"], ev["f1"]) == (4, 4, 1.0)
  cl = tasks.clinical(ctx)["pretrained"]
  assert cl["train_nights"] == 4 and cl["test_nights"] == 2
  assert cl["age"]["mae"] == pytest.approx(0.0, abs=1e-3)  # age is a feature of the night
  assert cl["ahi"]["mae"] == pytest.approx(0.0, abs=1e-2)  # AHI = 2 age + 1 here
  assert cl["ahi"]["pearson"] == pytest.approx(1.0)
  # train-mean baseline: mean age 42.5 vs test ages 60, 65 -> 20
  assert cl["age"]["baseline_mae"] == pytest.approx(20.0)
  assert cl["sex"]["auroc"] == 1.0
  rt = tasks.retrieval(ctx)["pretrained"]
  assert set(rt["pairs"]) == {"eeg->ecg", "ecg->eeg", "eeg->spo2", "spo2->eeg", "ecg->spo2",
                              "spo2->ecg"}
  assert rt["mean"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0} and rt["pairs"]["eeg->ecg"]["n"] == 48


def test_report_files(tmp_path):
  ctx, _ = _context()
  report = {"checkpoint_step": 3, "family": "sleep2vec", "modalities": MODS,
            "stages": ["W", "N1", "N2", "N3", "REM"], "encoders": ctx.encoders,
            "splits": reports.split_summary(_manifest()), "seconds": {},
            "tasks": {name: tasks.TASKS[name](ctx) for name in tasks.TASKS}}
  report["seconds"] = {k: 0.0 for k in report["tasks"]}
  report["headline"] = reports.headline(report)
  images = reports.write(report, str(tmp_path))
  import json  # pylint: disable=g-import-not-at-top
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["headline"][0]["staging_macro_f1"] == 1.0 and saved["images"] == images
  md = (tmp_path / "report.md").read_text()
  assert "## Headline" in md and "| pretrained |" in md
  for name in ("hypnogram", "confusion", "robustness", "label_curve", "retrieval"):
    png = tmp_path / images[name]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({images[name]})" in md
  text = reports.headline_text(report)
  assert "pretrained" in text and "staging_macro_f1" in text
