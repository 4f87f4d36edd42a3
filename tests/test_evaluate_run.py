"""`sleepjax eval` on a tiny trained checkpoint: every task runs and writes a well-formed report,
every split used is subject-disjoint, two processes give the single process's numbers."""

import json

import pytest

from launch.local import launch
from sleepjax.evaluate import run
from tests.conftest import REPO

MODALITIES = ("eeg", "ecg", "spo2")


@pytest.fixture(scope="module")
def checkpoint(prepared, tmp_path_factory, tiny_config):
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("eval")
  (workdir / "data").symlink_to(prepared / "data")
  config = tiny_config.copy_and_resolve_references()
  config.data.modalities = MODALITIES
  config.train.steps = config.train.checkpoint_every = 2
  trainer.train(config, str(workdir))
  return workdir


def _eval_config(tiny_config, tasks):
  config = tiny_config.copy_and_resolve_references()
  config.eval.tasks = tasks
  config.eval.probe_steps = 30
  config.eval.seeds = (0, 1)
  config.eval.fractions = (0.1, 1.0)
  config.eval.robustness_max_subsets = 3
  config.eval.retrieval_pool = 32
  config.eval.sequence_steps = config.eval.sequence_eval_every = 10
  return config


EVERY_TASK = ("staging", "few_shot", "site", "robustness", "events", "clinical", "retrieval",
              "sequence", "yasa", "sleeplm")


@pytest.fixture(scope="module")
def every_task(checkpoint, tiny_config):
  """One evaluation with every task (written to the checkpoint's eval/), its report shared."""
  return run.evaluate(_eval_config(tiny_config, EVERY_TASK), str(checkpoint))


def test_every_task_on_a_tiny_checkpoint(checkpoint, every_task, tiny_config):
  tasks, report = EVERY_TASK, every_task
  assert report["checkpoint_step"] == 2 and report["modalities"] == list(MODALITIES)
  t = report["tasks"]
  assert set(t) == set(tasks)
  for enc in ("pretrained", "random_init"):
    s = t["staging"][enc]
    assert sum(map(sum, s["confusion"])) == s["epochs"] > 0
    assert len(t["robustness"][enc]) == 3
    assert set(t["few_shot"][enc]) == {"0.1", "1.0"}
    q = t["sequence"][enc]  # the sequence head scores every scored test epoch the probe scores
    assert q["epochs"] == s["epochs"] and sum(map(sum, q["confusion"])) == q["epochs"]
    assert q["test_nights"] == report["splits"]["test"]["recordings"] and q["steps"] == 10
  assert t["robustness"]["subsets"] == ["ecg", "eeg", "eeg+ecg+spo2"]  # sorted by size, name
  assert t["sleeplm"] == {"skipped": "not a SleepLM checkpoint"}
  # Every split is subject-disjoint; the site task's sides are site- and subject-disjoint.
  subjects = {k: set(v["subjects"]) for k, v in report["splits"].items()}
  assert not (subjects["train"] & subjects["test"]) and not (subjects["val"] & subjects["test"])
  if "skipped" not in t["site"]:
    assert not set(t["site"]["train_sites"]) & set(t["site"]["test_sites"])
    assert not (set(t["site"]["pretrained"]["train_subjects"])
                & set(t["site"]["pretrained"]["test_subjects"]))
  out = checkpoint / "eval"
  saved = json.loads((out / "report.json").read_text())
  assert saved["headline"][0]["encoder"] == "pretrained"
  md = (out / "report.md").read_text()
  for image in saved["images"].values():
    assert (out / image).read_bytes()[:4] == b"\x89PNG" and image in md
  assert "pretrained" in run.format_report(report)
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  head = api.load_staging_head(checkpoint / api.STAGING_HEAD)  # what `Model.stage` reads
  assert head["w"].shape == (tiny_config.model.width, 5) and int(head["step"]) == 2


def test_two_processes_equal_one(checkpoint, every_task, tmp_path, monkeypatch):
  """Each of two processes embeds its own slice; the numbers equal a single process's (the
  every-task evaluation's: each task's numbers do not depend on the others run beside it)."""
  single = every_task
  for d in ("train", "data"):  # the same run, its report written beside it, not over the shared one
    (tmp_path / d).symlink_to(checkpoint / d)
  monkeypatch.chdir(REPO)
  code = launch(["eval", f"--config={REPO}/configs/smoke.py:tiny", "--config.eval.probe_steps=30",
                 "--config.eval.sequence_steps=10", "--config.eval.sequence_eval_every=10",
                 "--config.eval.tasks=('staging','clinical','sequence')", f"--workdir={tmp_path}"],
                num_processes=2, devices_per_process=4, timeout_s=900)
  assert code == 0
  multi = json.loads((tmp_path / "eval" / "report.json").read_text())
  for enc in ("pretrained", "random_init"):
    a, b = single["tasks"]["staging"][enc], multi["tasks"]["staging"][enc]
    assert a["confusion"] == b["confusion"] and a["hypnogram"] == b["hypnogram"]
    assert a["macro_f1"] == pytest.approx(b["macro_f1"], abs=1e-9)
    sa, sb = single["tasks"]["sequence"][enc], multi["tasks"]["sequence"][enc]
    assert sa["confusion"] == sb["confusion"] and sa["hypnogram"] == sb["hypnogram"]
    ca, cb = single["tasks"]["clinical"][enc], multi["tasks"]["clinical"][enc]
    assert ca["age"]["mae"] == pytest.approx(cb["age"]["mae"], rel=1e-4)


def test_eval_modalities_mask_the_others(checkpoint, tiny_config):
  """`eval.modalities`: every table embeds only those modalities, the others absent, so staging
  with them equals the robustness task's row for the same subset (same probe, same l2)."""
  config = _eval_config(tiny_config, ("staging", "robustness"))
  config.eval.robustness_max_subsets = 7  # all of 3 modalities' subsets
  full = run.evaluate(config, str(checkpoint))
  config.eval.tasks, config.eval.modalities = ("staging",), ("ecg", "spo2")
  subset = run.evaluate(config, str(checkpoint))
  for enc in ("pretrained", "random_init"):
    row = next(r for r in full["tasks"]["robustness"][enc] if r["subset"] == "ecg+spo2")
    assert subset["tasks"]["staging"][enc]["macro_f1"] == pytest.approx(row["macro_f1"], abs=1e-9)
  assert subset["eval_modalities"] == ["ecg", "spo2"] and full["eval_modalities"] == list(MODALITIES)
  assert "(at evaluation only ecg, spo2)" in run.format_report(subset)
  assert "(at evaluation only" not in run.format_report(full)
  config.eval.modalities = ("eog",)
  with pytest.raises(ValueError, match=r"eval.modalities: \['eog'\] not in the checkpoint"):
    run.evaluate(config, str(checkpoint))
