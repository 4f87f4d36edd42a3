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
"""

import ml_collections

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
  c.train.steps, c.train.checkpoint_every = 300, 100
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
  elif arg:
    raise ValueError(f"configs/ssl.py: unknown arg {arg!r} (use '' or 'tiny')")
  return c
