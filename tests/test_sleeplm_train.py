"""SleepLM through the shared trainer: train -> restore -> generate (the text tasks:
test_evaluate_sleeplm.py)."""

import numpy as np

from sleepjax.config_tools import load_config
from tests.conftest import REPO


def test_train_restore_generate_round_trip(sleeplm_trained):
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  workdir, last = sleeplm_trained  # the preset trained (tests/conftest.py)
  config = load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny")
  config.eval.caption_stride = 3
  for key in ("loss", "loss_con", "loss_cap", "loss_rec", "retrieval_top1"):
    assert np.isfinite(last[key]), (key, last)

  report = generate.caption_recording(config, str(workdir))
  assert report["checkpoint_step"] == config.train.steps
  rows = report["rows"]
  assert [r["epoch"] for r in rows] == [0, 3]  # caption_epochs = 2, every third epoch
  assert all(isinstance(r["generated"], str) and r["reference"] for r in rows)
  text = generate.format_captions(report)
  assert "gen:" in text and "ref:" in text
  # a restored model generates the same text again (deterministic greedy decoding)
  again = generate.caption_recording(config, str(workdir), report["recording"])
  assert [r["generated"] for r in again["rows"]] == [r["generated"] for r in rows]

