"""The representation audit on hand-made embedding tables whose answers are known."""

import numpy as np
import pytest

from sleepjax.configs import common
from sleepjax.evaluate import audit, metrics, reports, tasks

E, R = 12, 8  # epochs per segment; recordings (one subject each, two segments, sites a/b)
STAGE_CYCLE = np.array([0, 1, 2, 2, 3, 3, 2, 4, 4, 2, 1, 0])


def _manifest():
  recs = {f"r{i}": {"subject": f"s{i}", "site": "site-a" if i % 2 else "site-b"}
          for i in range(R)}
  return {"sites": ["site-a", "site-b"], "recordings": recs}


def _table(split: str, encoder: str) -> dict:
  """Each split holds some recordings; `pretrained` embeds the subject (one-hot), `random_init`
  the stage (one-hot) and the position in the night; both add a little noise."""
  ids = {"train": range(0, 4), "val": range(4, 5), "test": range(5, R)}[split]
  rows = [(i, seg) for i in ids for seg in range(2)]
  n = len(rows)
  stage = np.tile(STAGE_CYCLE, (n, 1))
  index = np.arange(E)[None] + E * np.array([s for _, s in rows])[:, None]
  epoch = 0.01 * np.random.default_rng(len(split)).normal(size=(n, E, R + 6)).astype(np.float32)
  if encoder == "pretrained":
    epoch[np.arange(n), :, [i for i, _ in rows]] += 3.0
  else:
    epoch[np.arange(n)[:, None], np.arange(E)[None], R + stage] += 3.0
    epoch[..., R + 5] += index / (2 * E)
  return {"epoch": epoch, "stage": stage, "epoch_index": index,
          "site": np.array([i % 2 == 0 for i, _ in rows], np.int64),
          "recording": np.array([i for i, _ in rows])}


def _context():
  config = common.get_config()
  config.eval.update(dict(probe_steps=400, probe_lr=0.05, probe_l2=1e-4, audit_time_bins=2))
  return tasks.Context(config, _manifest(), ["eeg"], ["pretrained", "random_init"],
                       lambda enc, split, subset: _table(split, enc))


def test_labels_of_a_pooled_table():
  ctx = _context()
  table = audit.pooled(ctx, "pretrained")
  y = audit.labels(ctx, table)
  assert y["subject"][1] == R and y["site"][1] == 2 and y["time_of_night"][1] == 2
  assert len(y["stage"][0]) == R * 2 * E
  first = table["recording"] == 0
  assert set(y["subject"][0].reshape(-1, E)[first].ravel()) == {0}
  # the first segment of each night is its first half, the second its second half
  t = y["time_of_night"][0].reshape(-1, E)
  assert (t[0::2] == 0).all() and (t[1::2] == 1).all()


def test_audit_reads_what_each_embedding_holds():
  ctx = _context()
  out = audit.audit(ctx)
  p, r = out["pretrained"], out["random_init"]
  assert p["subject"]["balanced_accuracy"] == 1.0 and p["site"]["balanced_accuracy"] == 1.0
  assert p["subject"]["chance"] == pytest.approx(1 / R)
  assert p["stage"]["balanced_accuracy"] < 0.5  # the subject says nothing about the stage
  assert r["stage"]["balanced_accuracy"] == 1.0
  assert r["time_of_night"]["balanced_accuracy"] > 0.9
  assert r["subject"]["balanced_accuracy"] < 0.5
  md = reports.markdown({"checkpoint_step": 1, "family": "sleep2vec", "modalities": ["eeg"],
                         "headline": [], "splits": {}, "encoders": ["pretrained", "random_init"],
                         "tasks": {"audit": out}, "seconds": {}}, {})
  assert "Representation audit" in md and "time_of_night" in md


def test_balanced_accuracy():
  y = np.array([0, 0, 0, 1, -1])
  assert metrics.balanced_accuracy(y, np.array([0, 0, 0, 0, 1]), 2) == 0.5
  assert metrics.balanced_accuracy(y, np.array([0, 0, 1, 1, 0]), 2) == pytest.approx(5 / 6)
