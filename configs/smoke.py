"""CPU smoke config: a small sleep2vec on a synthetic cohort, 8 simulated devices, data parallel.

`--config=configs/smoke.py` is the demo's size; `--config=configs/smoke.py:tiny` is the size the
end-to-end test uses (seconds, not minutes); `--config=configs/smoke.py:hard` is the demo's size on
the hard synthetic benchmark (see data_prep/synthetic.py and BENCHMARKS.md).
"""

import ml_collections

from sleepjax.configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = common.get_config()  # the base is the demo's size
  if arg == "tiny":
    c.synthetic.n_subjects, c.synthetic.hours = 6, 1.0
    c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
    c.data.global_batch = 16
    c.model.width, c.model.mlp, c.model.depth = 32, 64, 1
    c.model.stem_features, c.model.proj_dim = 16, 32
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 6, 2, 3
    c.optim.warmup_steps = 2
    c.eval.probe_steps = 50
    c.eval.tasks = ("staging",)
    c.eval.probe_l2_grid = (1e-3,)
  elif arg == "hard":
    # The hard benchmark (data_prep/synthetic.py, `hard=True`): three sites with their own
    # montage, gain drift, noise and a planted site-stage artefact; age ranges differ by site.
    # The site task trains probes on sites a and b and tests on site c's test subjects.
    c.synthetic.n_subjects, c.synthetic.n_sites, c.synthetic.hard = 24, 3, True
    c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
    c.eval.train_sites = ("site-a", "site-b")
    c.eval.test_sites = ("site-c",)
  elif arg:
    raise ValueError(f"configs/smoke.py: unknown arg {arg!r} (use '', 'tiny' or 'hard')")
  return c
