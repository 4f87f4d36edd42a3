"""The one restore path (`sleepjax.train.restore`), seen through `sleepjax caption`: the model is
the checkpoint's whatever model keys the command line's config holds, and data whose subject
splits differ from those the checkpoint trained on is refused."""

import json
import os

import pytest

from sleepjax.config_tools import load_config
from tests.conftest import REPO


def _config():
  return load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny")


@pytest.fixture(scope="module")
def workdir(sleeplm_trained):
  return sleeplm_trained[0]  # the preset trained (tests/conftest.py)


def test_caption_uses_the_checkpoints_model_not_the_command_lines(workdir):
  """A preset that differs from the trained one in model keys (another decoder depth and
  contrastive width) is ignored for the model: the same captions as with the trained config."""
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  trained = generate.caption_recording(_config(), str(workdir))
  other = _config()
  other.model.embed_dim, other.model.decoder.depth = 48, 2
  report = generate.caption_recording(other, str(workdir))
  assert report["checkpoint_step"] == trained["checkpoint_step"] == _config().train.steps
  assert report["rows"] == trained["rows"]
  config, model, *_ = generate.restore_model(other, str(workdir))
  assert config.model.embed_dim == 32 and config.model.decoder.depth == 1
  assert len(model.decoder.self_blocks) == 1


def test_caption_refuses_data_with_other_splits(workdir, tmp_path):
  """The same shards under a manifest whose split hash differs (a re-prepared cohort)."""
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  data.mkdir()
  for entry in os.listdir(workdir / "data"):
    if entry != "manifest.json":
      (data / entry).symlink_to(workdir / "data" / entry)
  manifest = json.loads((workdir / "data" / "manifest.json").read_text())
  manifest["split_hash"] = "f" * 64
  (data / "manifest.json").write_text(json.dumps(manifest))
  config = _config()
  config.data.dir = str(data)
  with pytest.raises(ValueError, match="split hash"):
    generate.caption_recording(config, str(workdir))


def test_a_scanned_checkpoint_restores_in_its_own_layout(tmp_path, tiny_config):
  """model.scan_blocks changes the parameter tree; the checkpoint's config says which, so a restore
  with no config (or one whose preset loops) builds the scanned model and reads its parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sleepjax import sharding  # pylint: disable=g-import-not-at-top
  from sleepjax.train import checkpoint, optim, restore  # pylint: disable=g-import-not-at-top
  from sleepjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from tests.test_checkpoint_faults import _Iterator  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.model.scan_blocks = True
  config.data.modalities = ("eeg", "spo2")
  modalities = {m: (restore.CANONICAL[m].rate, len(restore.CANONICAL[m].channels))
                for m in config.data.modalities}  # what a restore without data builds
  mesh = sharding.make_mesh(restore.DATA_PARALLEL)
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  *_, shardings = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  state = state_lib.init_state(config, modalities, tx, shardings, config.seed)
  manager = checkpoint.make_manager(str(tmp_path), config)
  checkpoint.save(manager, 1, state, _Iterator(), config, force=True)
  manager.wait_until_finished()
  manager.close()
  for caller in (None, tiny_config):  # the checkpoint's config alone; a looping preset's
    restored = restore.restore(str(tmp_path), caller)
    assert restored.config.model.scan_blocks
    model = nnx.merge(restored.graphdef, restored.params)
    assert model.encoder.blocks.attn.q.shape[0] == config.model.depth
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
