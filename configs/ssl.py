"""The self-supervised benchmark (`sleepjax bench ssl --config=configs/ssl.py --workdir=W`; see
sleepjax/bench/ssl.py and BENCHMARKS.md "Self-supervised benchmark").

The pretraining pool is the hard synthetic cohort (data_prep/synthetic.py, `hard=True`): sites with
their own montage, gain drift, noise and a planted site-stage artefact, per-subject physiology
(age, sex, AHI) that moves the signals as much as some stage differences do. Pretraining reads the
train split of every site and never a stage label; probes are fitted on few labels of sites a + b
and scored on the held-out subjects of site c (and in-site on every site's test subjects).

The recipe: DAS-H with per-step negatives, sleep2vec's pair-first sampling restricted to pairs of
an electrode modality (EEG, EOG, EMG, ECG) with a non-electrode one (SpO2, airflow, effort):
electrode channels share common-mode interference (the hard cohort plants a site-specific one,
real recordings have mains, movement and reference artefacts), which aligning two electrode
modalities learns instead of physiology. BENCHMARKS.md has the rows that chose it: with every
modality encoded and all pairs the site becomes decodable at 0.99 and pretraining loses to a random
encoder on the held-out site; pair-first sampling gives most of the gain, the restriction the rest.

`configs/ssl.py:tiny` is the size the tests use (seconds per stage, numbers meaningless).

`configs/ssl.py:scaling` is also a sweep file (big_vision style: `sweep(config)` below): the
scaling curve, pretraining nights (fractions of the train split's subjects) x seeds at the
recipe's steps, each run evaluated (held-out-site probe at 1 % and all labels, pretrained and
random init), on the data `sleepjax bench ssl` prepared:

  sleepjax sweep --config=configs/ssl.py:scaling --workdir=W/scaling --config.data.dir=W/ssl/data
  sleepjax sweep-report --workdir=W/scaling
"""

import ml_collections

from sleepjax import sweep as sweep_lib
from sleepjax.configs import common

ELECTRODE = ("eeg", "eog", "emg", "ecg")
NON_ELECTRODE = ("spo2", "airflow", "resp_effort")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = common.get_config()
  c.synthetic.n_subjects, c.synthetic.n_sites, c.synthetic.hard = 36, 3, True
  c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
  c.eval.train_sites = ("site-a", "site-b")
  c.eval.test_sites = ("site-c",)
  c.eval.tasks = ("few_shot", "site", "audit", "bandpower")
  c.train.steps, c.train.checkpoint_every = 600, 200  # 600: BENCHMARKS "Recipe rows"
  c.data.modality_sampling = "pair_first"
  c.data.pair_weights = {f"{a}+{b}": 1.0 for a in ELECTRODE for b in NON_ELECTRODE}
  c.ssl.pretrain_seeds = (0, 1, 2)
  if arg == "tiny":
    c.synthetic.n_subjects, c.synthetic.hours = 9, 1.0
    c.data.global_batch = 16
    c.model.width, c.model.mlp, c.model.depth = 32, 64, 1
    c.model.stem_features, c.model.proj_dim = 16, 32
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 4, 2, 2
    c.optim.warmup_steps = 1
    c.eval.probe_steps = 30
    c.eval.probe_l2_grid = (1e-3,)
    c.eval.fractions = (0.1, 1.0)
    c.eval.seeds = (0,)
    c.ssl.pretrain_seeds = (0, 1)
  elif arg == "scaling":
    c.eval.tasks, c.eval.fractions = ("site",), (0.01, 1.0)
    c.sweep = sweep_lib.sweep_section(subject_fractions=(0.25, 0.5, 1.0), seeds=(0, 1))
    c.launch = sweep_lib.launch_config()
    c.launch.eval = True  # the probes are the curve; the sweep's val loss is a side column
  elif arg:
    raise ValueError(f"configs/ssl.py: unknown arg {arg!r} (use '', 'tiny' or 'scaling')")
  return c


def sweep(c):
  """The `scaling` runs, seed by seed (a finished seed is a whole curve): one per fraction of the
  train split's subjects pretrained on, the recipe's steps each."""
  if "sweep" not in c:
    raise ValueError("the sweep is configs/ssl.py:scaling")
  for seed in c.sweep.seeds:
    for fraction in map(float, c.sweep.subject_fractions):
      yield {"name": f"nights{fraction:g}-s{seed}", "data.subject_fraction": fraction, "seed": seed}
