"""The wearable benchmark (`sleepjax bench wearable --config=configs/wearable.py --workdir=W`; see
sleepjax/bench/wearable.py and BENCHMARKS.md "Wearables: bring a new sensor (issue 26)").

The smoke preset's model, optimizer and pretraining length on a synthetic cohort whose nights carry
PSG and a wrist's PPG + actigraphy (`synthetic.wearables`); more subjects than the smoke cohort and a
third of them held out for test, so the test macro-F1 averages over more than two nights. Staging
is scored from PPG + actigraphy alone (`eval.modalities`).

`configs/wearable.py:tiny` is the size the tests use (seconds per run, numbers meaningless).
"""

import ml_collections

from sleepjax.configs import common

PSG = ("eeg", "eog", "emg", "ecg", "spo2", "airflow", "resp_effort")
WEARABLE = ("ppg", "actigraphy")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = common.get_config()
  c.synthetic.n_subjects, c.synthetic.wearables = 18, True
  c.prep.modalities = PSG + WEARABLE
  c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
  c.data.modalities = PSG  # pretraining; adaptation and the from-scratch runs set their own
  c.adapt.new_modalities = WEARABLE
  c.wearable.seeds = (0, 1, 2)
  c.eval.tasks = ("few_shot",)
  c.eval.modalities = WEARABLE
  if arg == "tiny":
    c.synthetic.n_subjects, c.synthetic.hours = 6, 1.0
    c.data.global_batch = 16
    c.model.width, c.model.mlp, c.model.depth = 32, 64, 1
    c.model.stem_features, c.model.proj_dim = 16, 32
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
    c.adapt.stage1_steps = c.adapt.stage2_steps = 1
    c.wearable.seeds = (0,)
    c.optim.warmup_steps = 1
    c.eval.probe_steps = 20
    c.eval.probe_l2_grid = (1e-3,)
    c.eval.fractions = (0.1, 1.0)
    c.eval.seeds = (0,)
  elif arg:
    raise ValueError(f"configs/wearable.py: unknown arg {arg!r} (use '' or 'tiny')")
  return c
