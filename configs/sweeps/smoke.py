"""CPU smoke sweep: 3 model sizes x 2 modality counts on the tiny synthetic cohort, tens of steps.

  sleepjax synth --config=configs/sweeps/smoke.py --workdir=runs/sweep-smoke
  sleepjax prep --config=configs/sweeps/smoke.py --workdir=runs/sweep-smoke
  sleepjax sweep --config=configs/sweeps/smoke.py --workdir=runs/sweep-smoke
  sleepjax sweep-report --workdir=runs/sweep-smoke

The sizes are CPU-sized stand-ins for the family size table (configs/sweeps/sleep2vec.py uses the
real one). `--config.sweep.sizes=xs,s`, `--config.train.steps=40`, ... change the sweep
before it starts; a started run keeps the config it started with.
"""

import pathlib

import ml_collections

from sleepjax import sweep as sweep_lib

SIZES = {
    "xs": dict(width=16, depth=1, heads=2, mlp=32, proj_dim=16),
    "s": dict(width=32, depth=1, heads=4, mlp=64, proj_dim=32),
    "m": dict(width=64, depth=2, heads=4, mlp=128, proj_dim=32),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = sweep_lib.load_module(pathlib.Path(__file__).parents[1] / "smoke.py").get_config("tiny")
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 20, 10, 10
  c.optim.warmup_steps = 4
  c.sweep = sweep_lib.sweep_section(sizes=("xs", "s", "m"), modality_counts=(2, 3))
  c.launch = sweep_lib.launch_config()
  return c


def sweep(c):
  return sweep_lib.grid(c, SIZES)
