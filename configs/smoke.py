"""CPU smoke config: a small sleep2vec on a synthetic cohort, 8 simulated devices, data parallel.

`--config=configs/smoke.py` is the demo's size; `--config=configs/smoke.py:tiny` is the size the
end-to-end test uses (seconds, not minutes); `--config=configs/smoke.py:hard` is the demo's size on
the hard synthetic benchmark (see data_prep/synthetic.py and BENCHMARKS.md).
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.synthetic = dict(n_subjects=12, n_sites=2, hours=1.5, seed=0, workers=1)

  c.prep = ml_collections.ConfigDict()
  c.prep.raw_dir = ""  # default: <workdir>/raw
  c.prep.modalities = ("eeg", "eog", "emg", "ecg", "spo2", "airflow", "resp_effort")
  c.prep.channel_map = "generic"
  c.prep.segment_epochs = 10
  c.prep.min_duration_s = 1800  # shorter recordings are skipped (QC); real cohorts: 3600 or more
  c.prep.shard_records = 64
  c.prep.compression = "uncompressed"  # or snappy, zstd:1, ... (see BENCHMARKS.md)
  c.prep.split_fractions = dict(train=0.7, val=0.15, test=0.15)
  c.prep.seed = 0
  c.prep.workers = 2
  c.prep.num_shards = 1  # > 1: convert only slice prep.shard_index (cluster array job), then merge
  c.prep.shard_index = 0
  c.prep.merge = False  # True: assemble the shards' staged recordings into shards + manifest

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # default: <workdir>/data
  c.data.modalities = ()  # modalities to train on; empty = all the manifest (prep) has
  c.data.window_epochs = 4
  c.data.global_batch = 32
  c.data.subject_fraction = 1.0  # < 1: train on a fixed subset of the training subjects (sweeps)
  c.data.modality_sampling = "all"  # all | all_present | pair_first | dropout
  c.data.pair_weights = {}  # pair_first: {"eeg+ecg": 2.0, ...}; empty = uniform over usable pairs
  c.data.modality_dropout = 0.25
  c.data.min_modalities = 2
  c.data.verify_shards = "stamp"  # full | stamp (hash once, then on size/mtime change) | size
  c.data.caption_len = 0  # > 0: tokenised captions [W, groups, caption_len] travel with batches
  c.data.read_threads = 2
  c.data.prefetch = 4
  c.data.workers = 0  # grain worker processes (mp_prefetch); 0 = threads in the trainer process

  c.text = ml_collections.ConfigDict()
  c.text.vocab_size = 512  # caption tokenizer (SentencePiece); digits are split one by one

  c.model = ml_collections.ConfigDict()
  c.model.family = "sleep2vec"  # a key of sleepjax.families.FAMILIES
  # epoch (sleep2vec's: residual MLP on the flattened 30-s epoch) | patch (conv stem on 1-s patches).
  # The CPU demo uses patch: on the demo cohort after 300 steps the flattened-epoch MLP has not yet
  # learnt spectral features (staging macro-F1 0.35, random init 0.21) while the conv stem has
  # (0.98 vs 0.93); the sleep2vec presets (configs/sleep2vec.py) use epoch, as the paper.
  c.model.tokenizer = "patch"
  c.model.tokenizer_width = 0  # 0 = width; else tokenizers at this width + one projection to width
  c.model.width = 64
  c.model.depth = 2
  c.model.heads = 4
  c.model.mlp = 256
  c.model.norm = "pre"  # pre | post (RoFormer/BERT: a LayerNorm on the input and after each add)
  c.model.norm_eps = 1e-6  # the transformer's LayerNorm epsilon (the reference's RoFormer: 1e-12)
  c.model.dropout = 0.0  # training only: epoch tokenizer's MLP branch, encoder input, block outputs
  c.model.attention_dropout = 0.0  # training only: attention probabilities (not attention=cudnn)
  c.model.modality_embed = True  # a learned vector per modality added to its tokens (reference: no)
  c.model.token_proj = "auto"  # auto (if tokenizer_width != width) | always (after the mask token)
  c.model.stem_features = 32  # patch tokenizer only
  c.model.patch_seconds = 1  # patch tokenizer only
  c.model.proj_hidden = 0  # projection head hidden width; 0 = width
  c.model.proj_dim = 64
  c.model.head_norm = "batch"  # batch (over the global batch's valid tokens) | layer
  c.model.mask_fraction = 0.15  # present tokens replaced by the modality's mask token in training
  c.model.dtype = "float32"  # matmul (compute) dtype: bfloat16 on accelerators
  c.model.param_dtype = "float32"  # step's weights: float32 or bfloat16 (cast of a float32 master)
  c.model.attention = "xla"  # xla | cudnn (flash attention, GPU, bf16) | auto (cudnn on GPU in bf16)
  c.model.residual_dtype = "float32"  # float32 | compute (model.dtype): residual stream + norm outputs
  c.model.remat = "none"  # none | full | save_dots | save_attn_proj (activation memory vs compute)

  c.objective = ml_collections.ConfigDict()
  c.objective.loss = "dash"  # dash (DAS-H InfoNCE) | info_nce (w = 1, h = 0)
  c.objective.pair_strategy = "all_pairs"  # pair_first | all_pairs | leave_one_out
  c.objective.negatives = "per_step"  # per_step (B x B per epoch position) | all_tokens
  c.objective.temperature = 0.2
  c.objective.hard_scale = 0.1  # same-night negatives: logit - hard_scale / T
  c.objective.sigma_age = 20.0
  c.objective.alpha_sex = 0.8
  c.objective.gamma_same = 1.3
  c.objective.gamma_diff = 0.8
  c.objective.eps = 1e-6

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.05
  c.optim.b2 = 0.98
  c.optim.grad_clip = 1.0

  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300  # the schedule's length
  c.train.stop_after_steps = 0  # > 0: stop this run after that many steps (requeued jobs resume)
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3
  c.train.resume_step = 0  # > 0: resume this step (newer ones set aside); 0: newest that restores
  # EMA of the weights: this -> 1 (cosine over train.steps). The paper's 0.996 suits its 100k
  # steps; over 300 it would leave ~55 % of the random init in the EMA that eval uses.
  c.train.ema_momentum = 0.95  # at step 0, -> 1 over train.steps; 0 = no EMA (EMA = params)
  c.train.microbatches = 1  # > 1: GradCache accumulation over that many micro-batches
  c.train.max_nonfinite_steps = 10  # skipped (non-finite) updates in a row before the run stops
  c.train.allow_config_change = False  # resume even if model/data-defining keys changed
  c.train.profile_steps = 0  # > 0: trace that many steps (after compilation) into train/tb
  c.train.val_every = 0  # > 0: val_loss (eval mode, fixed batches and keys) every N steps
  c.train.val_batches = 4  # validation batches val_loss averages over

  c.eval = ml_collections.ConfigDict()
  c.eval.checkpoint_step = 0  # > 0: evaluate/caption this step; 0: the newest that restores
  # also: yasa, sleeplm, supervised, finetune
  c.eval.tasks = ("staging", "few_shot", "site", "robustness", "events", "clinical", "retrieval")
  c.eval.train_split = "train"  # probes, regressors and heads are fitted here
  c.eval.val_split = "val"  # choices: probe l2, event thresholds, ridge alpha
  c.eval.test_split = "test"  # every reported number
  c.eval.allow_split_mismatch = False  # True: evaluate on data whose split hash differs (warns)
  c.eval.probe_steps = 300
  c.eval.probe_lr = 0.05
  c.eval.probe_l2 = 1e-3
  c.eval.probe_l2_grid = (1e-4, 1e-3, 1e-2)  # chosen on val macro-F1
  c.eval.fractions = (0.01, 0.1, 1.0)  # few-shot: fractions of the training epochs labelled
  c.eval.seeds = (0, 1, 2)  # few-shot draws per fraction (mean +- sd)
  c.eval.train_sites = ()  # site task: probe sites (empty = the first site)
  c.eval.test_sites = ()  # site task: test sites (empty = every other site)
  c.eval.robustness_max_subsets = 32  # 2^k - 1 subsets up to this many, else a seeded sample
  c.eval.event_kinds = ("apnea", "hypopnea", "desaturation", "arousal")  # events task kinds
  c.eval.retrieval_pool = 256  # test epochs per retrieval pool (chance R@1 = 1 / pool)
  c.eval.finetune_steps = 200  # supervised (from scratch) / finetune (frozen tokenizers) steps
  c.eval.finetune_lr = 1e-3  # supervised / finetune AdamW learning rate
  c.eval.finetune_fractions = (0.01, 1.0)  # label fractions for supervised / finetune
  c.eval.finetune_seeds = (0,)  # supervised / finetune seeds (mean +- sd)
  # `sequence` task: a night-level head over frozen epoch embeddings of whole nights
  c.eval.sequence_width = 64  # sequence head: hidden width
  c.eval.sequence_conv_layers = 3  # sequence head: dilated conv blocks (dilations 1, 2, 4, ..)
  c.eval.sequence_attention_layers = 1  # sequence head: self-attention blocks over the whole night
  c.eval.sequence_heads = 4  # sequence head: attention heads
  c.eval.sequence_steps = 300  # sequence head: most AdamW steps (early stopping may end sooner)
  c.eval.sequence_lr = 2e-3  # sequence head: AdamW learning rate
  c.eval.sequence_weight_decay = 0.01  # sequence head: AdamW weight decay
  c.eval.sequence_batch = 8  # sequence head: training nights per step
  c.eval.sequence_eval_every = 25  # sequence head: steps between val macro-F1 checks
  c.eval.sequence_patience = 4  # sequence head: val checks without improvement before stopping
  c.eval.sequence_seeds = (0,)  # sequence head: seeds (init, night order); > 1: mean +- sd

  c.bench = ml_collections.ConfigDict()  # `sleepjax bench data`: its synthetic cohort and rows
  c.bench.subjects = 8
  c.bench.hours = 8.0
  c.bench.segment_epochs = 240
  c.bench.seconds = 3.0  # per row
  c.bench.max_workers = 0  # worker-process rows up to this many (0: every core)

  if arg == "tiny":
    c.synthetic = dict(n_subjects=6, n_sites=2, hours=1.0, seed=0, workers=1)
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
    c.synthetic = dict(n_subjects=24, n_sites=3, hours=1.5, seed=0, workers=1, hard=True)
    c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
    c.eval.train_sites = ("site-a", "site-b")
    c.eval.test_sites = ("site-c",)
  elif arg:
    raise ValueError(f"configs/smoke.py: unknown arg {arg!r} (use '', 'tiny' or 'hard')")
  return c
