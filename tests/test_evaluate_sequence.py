"""The night-level sequence head: nights assembled exactly, and a planted temporal rule that a
per-epoch probe cannot learn and the sequence head must."""

import numpy as np

from sleepjax.configs import common
from sleepjax.evaluate import sequence, tasks

W, SEGS = 10, 4  # epochs per segment, segments per night
SPLITS = {"train": range(0, 12), "val": range(12, 15), "test": range(15, 19)}


def _manifest():
  recs = {f"r{i:02d}": {"subject": f"s{i}", "site": "site-a"} for i in range(19)}
  return {"sites": ["site-a"], "recordings": recs,
          "splits": {s: {"subjects": [f"s{i}" for i in ids],
                         "recordings": [f"r{i:02d}" for i in ids]} for s, ids in SPLITS.items()}}


def _table(split: str) -> dict:
  """Stages drawn i.i.d. per epoch; epoch t's embedding is one-hot(stage of epoch t - 1) + noise:
  a stage is written only into the NEXT epoch's embedding."""
  rows, stage, emb, index = [], [], [], []
  for r in SPLITS[split]:
    rng = np.random.default_rng(r)
    y = rng.integers(0, 5, W * SEGS)
    x = np.zeros((W * SEGS, 8), np.float32)
    x[np.arange(1, W * SEGS), y[:-1]] = 3.0
    x += 0.3 * rng.normal(size=x.shape).astype(np.float32)
    for s in range(SEGS):
      rows.append(r)
      stage.append(y[s * W:(s + 1) * W])
      emb.append(x[s * W:(s + 1) * W])
      index.append(np.arange(s * W, (s + 1) * W))
  return {"epoch": np.stack(emb), "stage": np.stack(stage), "epoch_index": np.stack(index),
          "recording": np.array(rows), "site": np.zeros(len(rows), np.int64)}


def test_nights_are_assembled_by_epoch_index_with_gaps_masked():
  t = {"epoch": np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1),
       "stage": np.array([[0, 1], [2, 3], [4, 4]]), "recording": np.array([0, 0, 1]),
       "epoch_index": np.array([[4, 5], [8, 9], [0, 1]])}  # recording 0: epochs 4-5, gap, 8-9
  n = sequence.nights(t)
  assert n["recording"].tolist() == [0, 1] and n["length"].tolist() == [6, 2]
  assert n["stage"].tolist() == [[0, 1, -1, -1, 2, 3], [4, 4, -1, -1, -1, -1]]
  assert n["mask"].tolist() == [[True, True, False, False, True, True],
                                [True, True, False, False, False, False]]
  assert n["x"][0, :, 0].tolist() == [0, 1, 0, 0, 2, 3] and n["x"][1, :2, 0].tolist() == [4, 5]


def test_sequence_head_learns_a_rule_a_per_epoch_probe_cannot():
  config = common.get_config()
  config.eval.update(dict(
      probe_steps=200, probe_lr=0.05, probe_l2=1e-4, probe_l2_grid=(1e-4,), sequence_steps=150,
      sequence_eval_every=25, sequence_width=32, sequence_attention_layers=1,
      sequence_seeds=(0, 1)))
  ctx = tasks.Context(config, _manifest(), ["eeg"], ["pretrained"],
                      lambda enc, split, subset: _table(split))
  probe = tasks.staging(ctx)["pretrained"]
  seq = sequence.sequence(ctx)["pretrained"]
  # Each stage is i.i.d.: an epoch's own embedding says nothing about it (chance: ~0.2).
  assert probe["accuracy"] < 0.35, probe["accuracy"]
  # The next epoch's embedding says it exactly; only the last epoch of each of the 4 test nights
  # (40 epochs each) has no successor to read it from.
  assert seq["epochs"] == 160 and seq["test_nights"] == 4 and seq["train_nights"] == 12
  assert seq["accuracy"] >= 0.95, seq["accuracy"]
  h = seq["hypnogram"]
  assert h["recording"] == "r15" and len(h["pred"]) == W * SEGS
  assert h["pred"][:-1] == h["true"][:-1]
  assert seq["macro_f1"] > 0.9 and seq["kappa"] > 0.9
  assert sum(map(sum, seq["confusion"])) == 160
  assert seq["best_step"] in seq["val_macro_f1"]  # early stopping on val
  over = seq["over_seeds"]["macro_f1"]  # the second seed learns the rule too
  assert over["n"] == 2 and over["values"][0] == seq["macro_f1"] and min(over["values"]) > 0.9
