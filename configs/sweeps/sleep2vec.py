"""sleep2vec scaling sweeps over the family size table (`configs/sleep2vec.py: SIZES`).

  --config=configs/sweeps/sleep2vec.py:size        every size, all nine modalities, one budget
  --config=configs/sweeps/sleep2vec.py:compute     IsoFLOP grid: sizes x FLOP budgets
  --config=configs/sweeps/sleep2vec.py:modalities  one size, 2..9 modalities, 3 subsets per count
  --config=configs/sweeps/sleep2vec.py:data        one size, 5 fractions of the training subjects

Each preset only fills `config.sweep` (see `sleepjax.sweep.sweep_section`) on top of the family's
preset; every axis can be changed from the command line, e.g. `--config.sweep.seeds=0,1,2` or
`--config.sweep.budgets_flops=1e17,1e18`. With a FLOP budget every run gets
train.steps = budget / the family's analytic FLOPs per step, so runs spend the same compute.
Runner settings live under `config.launch` (`--config.launch.slurm.nodes=4`, ...).
"""

import pathlib

import ml_collections

from sleepjax import sweep as sweep_lib

FAMILY = pathlib.Path(__file__).parents[1] / "sleep2vec.py"
PRESETS = ("size", "compute", "modalities", "data")


def sizes() -> dict[str, dict]:
  """{size: its model section} from the family preset `size=<name>`."""
  family = sweep_lib.load_module(FAMILY)
  return {name: family.get_config(f"size={name}").model.to_dict() for name in family.SIZES}


def get_config(arg: str = "size") -> ml_collections.ConfigDict:
  arg = arg or "size"
  if arg not in PRESETS:
    raise ValueError(f"configs/sweeps/sleep2vec.py: unknown preset {arg!r}; use one of {PRESETS}")
  family = sweep_lib.load_module(FAMILY)
  names = tuple(family.SIZES)
  middle = "20m" if "20m" in names else names[len(names) // 2]
  c = family.get_config(f"size={middle}")
  c.sweep = {
      "size": lambda: sweep_lib.sweep_section(sizes=names, budgets_flops=(1e18,)),
      "compute": lambda: sweep_lib.sweep_section(sizes=names, budgets_flops=(1e17, 1e18, 1e19)),
      "modalities": lambda: sweep_lib.sweep_section(
          sizes=(middle,), modality_counts=tuple(range(2, 10)), subsets_per_count=3,
          budgets_flops=(1e18,)),
      "data": lambda: sweep_lib.sweep_section(
          sizes=(middle,), subject_fractions=(0.1, 0.2, 0.4, 0.7, 1.0), budgets_flops=(1e18,)),
  }[arg]()
  c.launch = sweep_lib.launch_config()
  return c


def sweep(c):
  return sweep_lib.grid(c, sizes())
