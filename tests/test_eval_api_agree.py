"""`sleepjax eval` and the public API give the same staging numbers on the same checkpoint.

The API path is what a researcher outside the codebase runs: `sleepjax.api.load` on the workdir,
`Model.embed` / `Model.stage` on the raw EDF + annotation files (not the shards), then a probe.
Both paths are held to the same numbers, so a difference between them in reading, per-night
normalisation, EMA vs raw parameters, windowing or the staging head shows up as a number that
moves: the staging head `eval` saves, applied by `Model.stage`, must reproduce eval's confusion
matrix, and the few-shot probe fitted on API embeddings must reproduce eval's few-shot curve.
"""

import os
import shutil

import numpy as np
import pytest

from sleepjax import api
from sleepjax.evaluate import metrics, run, tasks
from sleepjax.modalities import STAGES


@pytest.fixture(scope="module")
def evaluated(sleep2vec_trained, tiny_config, tmp_path_factory):
  """The tiny trained checkpoint (tests/conftest.py) in a workdir of its own, evaluated by the
  code `sleepjax eval` runs: (workdir, report, the eval config)."""
  work = tmp_path_factory.mktemp("eval_api")
  os.symlink(sleep2vec_trained[0] / "data", work / "data")
  shutil.copytree(sleep2vec_trained[0] / "train", work / "train")
  config = tiny_config.copy_and_resolve_references()
  config.eval.tasks = ("staging", "few_shot")
  config.eval.fractions, config.eval.seeds = (0.1, 1.0), (0, 1)
  return work, run.evaluate(config, str(work)), config


def _night_files(prepared, rid):
  return prepared / "raw" / "edf" / f"{rid}.edf", prepared / "raw" / "annotations" / f"{rid}.xml"


def _whole_segments(manifest, rid) -> int:
  """Epochs eval embeds of a recording: its whole segments (prep drops a trailing partial one)."""
  return manifest["recordings"][rid]["segments"] * manifest["segment_epochs"]


def test_staging_head_through_the_api_equals_eval(evaluated, prepared):
  from sleepjax.data.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  work, report, _ = evaluated
  manifest = read_manifest(prepared / "data")
  model = api.load(work)
  y, pred = [], []
  for rid in sorted(manifest["splits"]["test"]["recordings"]):
    staged = model.stage(*_night_files(prepared, rid))
    n = _whole_segments(manifest, rid)
    y.append(staged.night.stages[:n])
    pred.append(staged.stages[:n])
  y, pred = np.concatenate(y), np.concatenate(pred)
  ours = metrics.staging(y, pred, STAGES)
  theirs = report["tasks"]["staging"]["pretrained"]
  assert ours["epochs"] == theirs["epochs"] > 0
  assert ours["confusion"] == theirs["confusion"]
  assert ours["macro_f1"] == pytest.approx(report["pretrained"]["macro_f1"], abs=1e-9)


def test_few_shot_probe_on_api_embeddings_equals_eval(evaluated, prepared):
  """The same probe code (`tasks.few_shot`), fed embeddings the API computed from the EDFs."""
  from sleepjax.data.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  work, report, config = evaluated
  manifest = read_manifest(prepared / "data")
  model = api.load(work)
  w = manifest["segment_epochs"]
  ids = sorted(manifest["recordings"])

  def api_table(encoder, split, subset):
    assert encoder == "pretrained" and subset is None
    rows = {"epoch": [], "stage": [], "recording": []}
    for rid in sorted(manifest["splits"][split]["recordings"]):  # eval's order: recording, epoch
      night = model.embed(*_night_files(prepared, rid))
      n = _whole_segments(manifest, rid)
      rows["epoch"].append(night.epoch[:n].reshape(-1, w, night.epoch.shape[-1]))
      rows["stage"].append(night.stages[:n].reshape(-1, w))
      rows["recording"].append(np.full(n // w, ids.index(rid)))
    return {k: np.concatenate(v) for k, v in rows.items()} if rows["epoch"] else None

  ctx = tasks.Context(config, manifest, list(model.modalities), ["pretrained"], api_table)
  ours = tasks.few_shot(ctx)["pretrained"]
  theirs = report["tasks"]["few_shot"]["pretrained"]
  assert set(ours) == set(theirs) == {"0.1", "1.0"}
  for fraction in ours:
    for key in ("macro_f1", "kappa", "labelled_epochs"):
      np.testing.assert_allclose(ours[fraction][key]["values"], theirs[fraction][key]["values"],
                                 rtol=0, atol=1e-9, err_msg=f"{fraction} {key}")

