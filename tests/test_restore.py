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
