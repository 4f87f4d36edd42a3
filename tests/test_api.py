"""sleepjax.api: a checkpoint restored from its own config embeds / stages a night given as an EDF
(synthetic and real) or arrays, exactly as the training pipeline embeds the same prepared epochs."""

import importlib.util
import os
import pathlib
import shutil

import numpy as np
import pytest

from sleepjax import api
from sleepjax.modalities import STAGES


@pytest.fixture(scope="module")
def workdir(sleep2vec_trained, tmp_path_factory):
  """The tiny preset trained (tests/conftest.py), in a workdir of its own: a staging head is
  saved beside train/."""
  trained = sleep2vec_trained[0]
  work = tmp_path_factory.mktemp("api")
  os.symlink(trained / "data", work / "data")
  shutil.copytree(trained / "train", work / "train")
  return work


@pytest.fixture(scope="module")
def model(workdir):
  return api.load(workdir)


def _test_recording(prepared):
  from sleepjax.data.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(prepared / "data")
  rid = manifest["splits"]["test"]["recordings"][0]
  raw = prepared / "raw"
  return manifest, rid, raw / "edf" / f"{rid}.edf", raw / "annotations" / f"{rid}.xml"


def test_load_restores_its_own_config(model, workdir, tiny_config):
  steps = tiny_config.train.steps
  assert model.step == steps and model.workdir == workdir
  assert model.ema  # the train state keeps an EMA of the parameters; the API uses it
  assert model.config.model.width == tiny_config.model.width
  # The trainer saved the modalities it resolved from the manifest (data.modalities was empty).
  assert model.modalities == tuple(tiny_config.prep.modalities)
  same = api.load(workdir / "train" / "checkpoints" / str(steps))
  assert same.step == steps and same.workdir == workdir
  with pytest.raises(FileNotFoundError, match="not a workdir"):
    api.load(workdir / "data")


def test_embeddings_equal_the_training_pipelines(model, prepared):
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  manifest, rid, edf_path, xml_path = _test_recording(prepared)
  night = model.embed(edf_path, annotations=xml_path)
  signals, _, _ = model.prepare(edf_path, xml_path)
  E, D = night.epoch.shape
  assert E == manifest["recordings"][rid]["epochs"] and D == model.config.model.width
  assert night.present.shape == (E, len(model.modalities)) and night.night.shape == (D,)
  assert night.verdict == "ok" and night.per_modality.shape == (E, len(model.modalities), D)

  recording_ids = sorted(manifest["recordings"])
  seen = 0
  for local in pipeline.make_dataset(manifest, "test", list(model.modalities), local_batch=4,
                                     seed=0, train=False):
    batch = pipeline.nest(local)
    out = model.embed_windows(batch["signals"], batch["masks"])
    for b in range(len(local["stage"])):
      if recording_ids[local["recording"][b]] != rid:
        continue
      epochs = local["epoch_index"][b]
      for m in model.modalities:  # the same harmonised, float16 samples as the shards hold
        np.testing.assert_array_equal(signals[m][epochs], batch["signals"][m][b])
        np.testing.assert_array_equal(night.channel_mask[m][epochs], batch["masks"][m][b])
      np.testing.assert_array_equal(night.stages[epochs], local["stage"][b])
      np.testing.assert_allclose(night.epoch[epochs], out["epoch"][b], rtol=1e-5, atol=1e-5)
      seen += len(epochs)
  assert seen == manifest["recordings"][rid]["segments"] * manifest["segment_epochs"]


def test_arrays_embed_like_the_file(model, prepared):
  from data_prep import channels, edf  # pylint: disable=g-import-not-at-top
  _, _, edf_path, _ = _test_recording(prepared)
  resolved = channels.resolve_channels(edf.read_edf(edf_path), model.config.prep.channel_map)
  arrays = {key: (s.data, s.rate) for key, s in resolved.signals.items()}
  from_file, from_arrays = model.embed(edf_path), model.embed(arrays)
  np.testing.assert_allclose(from_arrays.epoch, from_file.epoch, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(from_arrays.present, from_file.present)
  with pytest.raises(ValueError, match=r"night\['eeg'\]: 1 channels, eeg has 2 \(c4_m1, c3_m2\)"):
    model.embed({"eeg": (np.zeros(128 * 60), 128)})


def test_stage_with_the_saved_head(model, workdir, prepared):
  _, _, edf_path, _ = _test_recording(prepared)
  with pytest.raises(FileNotFoundError, match="staging_head.npz: no staging head; `sleepjax eval`"):
    model.stage(edf_path)
  D = model.config.model.width
  rng = np.random.default_rng(0)
  api.save_staging_head(workdir / api.STAGING_HEAD, w=rng.normal(size=(D, len(STAGES))),
                        b=np.zeros(len(STAGES)), mu=np.zeros(D), sd=np.ones(D), step=1)
  staged = model.stage(edf_path)
  assert staged.stages.shape == (len(staged.night.epoch),)
  assert set(np.unique(staged.stages)) <= set(range(len(STAGES)))
  np.testing.assert_allclose(staged.probabilities.sum(-1), 1.0, rtol=1e-5)


def test_caption_needs_a_sleeplm_checkpoint(model, prepared):
  _, _, edf_path, _ = _test_recording(prepared)
  with pytest.raises(ValueError, match=r"^caption\(\) needs a SleepLM checkpoint \(model.family="
                     r"'sleeplm'\).*this checkpoint is model.family='sleep2vec'"):
    model.caption(edf_path)


def test_real_edf_from_a_pypi_package(model):
  """60 s of real ECG (biosignalsnotebooks' supine_1min.edf, 1000 Hz): two epochs, ECG only."""
  spec = importlib.util.find_spec("biosignalsnotebooks")
  if spec is None or spec.origin is None:
    pytest.skip("biosignalsnotebooks is not installed")
  path = (pathlib.Path(spec.origin).parent / "notebook_files/osf_files/signal_samples/"
          "supine_1min.edf")
  night = model.embed(path)
  assert night.epoch.shape == (2, model.config.model.width) and np.isfinite(night.epoch).all()
  ecg = model.modalities.index("ecg")
  assert night.present[:, ecg].all() and night.present.sum() == 2  # ECG, nothing else
  assert night.verdict == "skip"  # prep would skip a 1-minute night; the API still embeds it
