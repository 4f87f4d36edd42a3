"""The shared base every preset builds on (big_vision style): every key the code reads, with its
default and, as the line's trailing comment, its meaning (`sleepjax config` and
docs/reference/config.md read the comments from here).

A preset calls `common.get_config()` and overrides what differs. `model` and `objective` hold the
default family's (sleep2vec) keys; another family replaces both sections with its own, keeping
`SHARED_MODEL` (the model keys every family's code reads). `sleepjax config
--config=configs/common.py` prints the base itself.
"""

import ml_collections

# model keys every family has: those the family-independent code reads (families, train state,
# eval reports), and how the shared stack (sleepjax/models/layers.py) runs every family's blocks.
SHARED_MODEL = ("family", "dtype", "param_dtype", "attention", "remat", "scan_blocks")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # seed of model init, data order and the probe

  c.synthetic = ml_collections.ConfigDict()  # `sleepjax synth`: the synthetic cohort
  c.synthetic.n_subjects = 12  # `sleepjax synth`: subjects (one night each)
  c.synthetic.n_sites = 2  # `sleepjax synth`: sites (montages, sensor habits)
  c.synthetic.hours = 1.5  # `sleepjax synth`: hours per night
  c.synthetic.seed = 0  # `sleepjax synth`: seed of the cohort
  c.synthetic.workers = 1  # `sleepjax synth`: processes simulating subjects in parallel
  c.synthetic.hard = False  # `sleepjax synth`: the hard benchmark cohort (site chains, planted confound)
  c.synthetic.wearables = False  # `sleepjax synth`: add PPG ("Pleth") and wrist actigraphy ("Accel") channels

  c.prep = ml_collections.ConfigDict()
  c.prep.raw_dir = ""  # default: <workdir>/raw
  c.prep.modalities = ("eeg", "eog", "emg", "ecg", "spo2", "airflow", "resp_effort")  # modalities prep harmonises and stores (sleepjax.modalities.CANONICAL)
  c.prep.channel_map = "generic"  # cohort channel map (data_prep/channel_maps/<name>.json) or a path
  c.prep.segment_epochs = 10  # 30-s epochs per stored segment (the unit of shuffling and eval)
  c.prep.min_duration_s = 1800  # shorter recordings are skipped (QC); real cohorts: 3600 or more
  c.prep.shard_records = 64  # segments per ArrayRecord shard
  c.prep.compression = "uncompressed"  # or snappy, zstd:1, ... (see BENCHMARKS.md)
  c.prep.split_fractions = ml_collections.ConfigDict()  # train/val/test fractions, split by subject
  c.prep.split_fractions.train = 0.7  # fraction of subjects in train
  c.prep.split_fractions.val = 0.15  # fraction of subjects in val
  c.prep.split_fractions.test = 0.15  # fraction of subjects in test
  c.prep.seed = 0  # seed of the subject split and of caption wording
  c.prep.workers = 2  # prep worker processes (0 = one per core)
  c.prep.num_shards = 1  # > 1: convert only slice prep.shard_index (cluster array job), then merge
  c.prep.shard_index = 0  # sharded prep: this job's slice (0 .. num_shards-1)
  c.prep.merge = False  # True: assemble the shards' staged recordings into shards + manifest

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # default: <workdir>/data
  c.data.modalities = ()  # modalities to train on; empty = all the manifest (prep) has
  c.data.window_epochs = 4  # 30-s epochs per training window
  c.data.global_batch = 32  # windows per step over all devices and processes
  c.data.subject_fraction = 1.0  # < 1: train on a fixed subset of the training subjects (sweeps)
  c.data.modality_sampling = "all"  # all | all_present | pair_first | dropout
  c.data.pair_weights = {}  # pair_first: {"eeg+ecg": 2.0, ...}; empty = uniform over usable pairs
  c.data.pair_keys = "pair"  # pair_first batches carry "pair": its 2 modalities (least IO, one compiled step per pair) or "all": every modality (the others zero, absent, unread) + batch["pair"] (one compiled step)
  c.data.modality_dropout = 0.25  # dropout sampling: probability of masking a present modality
  c.data.min_modalities = 2  # dropout sampling: modalities always kept per record
  c.data.verify_shards = "stamp"  # full | stamp (hash once, then on size/mtime change) | size
  c.data.caption_len = 0  # > 0: tokenised captions [W, groups, caption_len] travel with batches
  c.data.read_threads = 2  # reader threads per process
  c.data.prefetch = 4  # batches prefetched per process
  c.data.workers = 0  # grain worker processes (mp_prefetch); 0 = threads in the trainer process
  c.data.device_prefetch = 2  # batches placed on the devices ahead of the step
  c.data.gain_augment = 1.0  # training batches only: each modality of each window times a gain log-uniform in [1/this, this]; 1 = off

  c.text = ml_collections.ConfigDict()
  c.text.vocab_size = 512  # caption tokenizer (SentencePiece); digits are split one by one

  c.model = ml_collections.ConfigDict()
  c.model.family = "sleep2vec"  # model family (a key of sleepjax.families.FAMILIES)
  # The CPU demo uses patch: in 300 CPU steps the flattened-epoch MLP has not yet learnt spectral
  # features while the conv stem has (measured in the README, Quickstart); the sleep2vec presets
  # (configs/sleep2vec.py) use epoch, as the paper.
  c.model.signal_tokenizer = "patch"  # epoch (residual MLP on the flattened 30-s epoch) | patch (conv stem on 1-s patches)
  c.model.signal_tokenizer_width = 0  # 0 = width; else tokenizers at this width + one projection to width
  c.model.width = 64  # transformer width D
  c.model.depth = 2  # transformer layers
  c.model.heads = 4  # attention heads
  c.model.mlp = 256  # MLP hidden width
  c.model.norm = "pre"  # pre | post (RoFormer/BERT: a LayerNorm on the input and after each add)
  c.model.norm_eps = 1e-6  # the transformer's LayerNorm epsilon (the reference's RoFormer: 1e-12)
  c.model.dropout = 0.0  # training only: epoch tokenizer's MLP branch, encoder input, block outputs
  c.model.attention_dropout = 0.0  # training only: attention probabilities (not attention=cudnn)
  c.model.modality_embed = True  # a learned vector per modality added to its tokens (reference: no)
  c.model.token_proj = "auto"  # auto (if signal_tokenizer_width != width) | always (after the mask token)
  c.model.stem_features = 32  # patch tokenizer only: filter-bank features
  c.model.patch_seconds = 1  # patch tokenizer only: patch length (s); divides 30
  c.model.proj_hidden = 0  # projection head hidden width; 0 = width
  c.model.proj_dim = 64  # contrastive projection size
  c.model.head_norm = "batch"  # batch (over the global batch's valid tokens) | layer
  c.model.mask_fraction = 0.15  # present tokens replaced by the modality's mask token in training
  c.model.dtype = "float32"  # matmul (compute) dtype: bfloat16 on accelerators
  c.model.param_dtype = "float32"  # step's weights: float32 or bfloat16 (cast of a float32 master)
  c.model.attention = "xla"  # xla | cudnn (flash attention, GPU, bf16) | auto (cudnn on GPU in bf16)
  c.model.residual_dtype = "float32"  # float32 | compute (model.dtype): residual stream + norm outputs
  c.model.remat = "none"  # none | full | save_dots | save_attn_proj (activation memory vs compute)
  c.model.scan_blocks = False  # transformer blocks stacked under nnx.scan (compile time flat in depth; another checkpoint tree)

  c.objective = ml_collections.ConfigDict()
  c.objective.loss = "dash"  # dash (DAS-H InfoNCE) | info_nce (w = 1, h = 0)
  c.objective.pair_strategy = "all_pairs"  # pair_first | all_pairs | leave_one_out
  c.objective.negatives = "per_step"  # per_step (B x B per epoch position) | all_tokens | within_window (W x W, one night) | every_token (B*W, same night included); the last two: loss=info_nce
  c.objective.temperature = 0.2  # InfoNCE temperature
  c.objective.hard_scale = 0.1  # same-night negatives: logit - hard_scale / T
  c.objective.sigma_age = 20.0  # DAS-H: age kernel width (years)
  c.objective.alpha_sex = 0.8  # DAS-H: kernel factor for a different-sex pair
  c.objective.gamma_same = 1.3  # DAS-H: site gate for a same-site pair
  c.objective.gamma_diff = 0.8  # DAS-H: site gate for a different-site pair
  c.objective.eps = 1e-6  # DAS-H: floor weight (same-night negatives get it)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-3  # peak learning rate (AdamW, warmup then cosine)
  c.optim.warmup_steps = 30  # linear warmup steps (unless warmup_fraction > 0)
  c.optim.warmup_fraction = 0.0  # > 0: warmup steps = this fraction of train.steps
  c.optim.end_lr_fraction = 0.01  # final learning rate as a fraction of the peak
  c.optim.weight_decay = 0.05  # AdamW weight decay (not on norms and biases)
  c.optim.b1 = 0.9  # AdamW beta1
  c.optim.b2 = 0.98  # AdamW beta2
  c.optim.grad_clip = 1.0  # global gradient-norm clip

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel mesh axis (-1 = the remaining devices)
  c.mesh.fsdp = 1  # FSDP mesh axis (parameters sharded)
  c.mesh.tensor = 1  # tensor-parallel mesh axis
  c.mesh.dcn_data = -1  # of `data`, the part split across TPU slices (-1 = every slice)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300  # the schedule's length
  c.train.stop_after_steps = 0  # > 0: stop this run after that many steps (requeued jobs resume)
  c.train.log_every = 25  # steps between logged metrics
  c.train.checkpoint_every = 100  # steps between checkpoints
  c.train.keep_checkpoints = 3  # checkpoints kept
  c.train.checkpoint_commit_file = False  # True on a gcsfuse mount of a flat bucket (no directory renames): a commit file marks a finished save
  c.train.resume_step = 0  # > 0: resume this step (newer ones set aside); 0: newest that restores
  # The paper's 0.996 suits its 100k steps; over 300 it would leave ~55 % of the random init in
  # the EMA that eval uses.
  c.train.ema_momentum = 0.95  # EMA of the weights: this at step 0, -> 1 (cosine over train.steps); 0 = no EMA (EMA = params)
  c.train.microbatches = 1  # > 1: GradCache accumulation over that many micro-batches
  c.train.max_nonfinite_steps = 10  # skipped (non-finite) updates in a row before the run stops
  c.train.allow_config_change = False  # resume even if model/data-defining keys changed
  c.train.profile_steps = 0  # > 0: trace that many steps (after compilation) into train/tb
  c.train.val_every = 0  # > 0: val_loss (eval mode, fixed batches and keys) every N steps
  c.train.val_batches = 4  # validation batches val_loss averages over

  c.adapt = ml_collections.ConfigDict()  # `sleepjax adapt`: graft new modalities onto a pretrained sleep2vec
  c.adapt.pretrained = ""  # `sleepjax adapt`: the pretrained run's workdir (its newest checkpoint)
  c.adapt.new_modalities = ("ppg", "actigraphy")  # `sleepjax adapt`: modalities added (new signal tokenizers)
  c.adapt.stage1_steps = 100  # `sleepjax adapt`: steps training only the new tokenizers against the frozen model
  c.adapt.stage2_steps = 200  # `sleepjax adapt`: steps training everything with per-group LR scales
  c.adapt.encoder_lr_scale = 0.1  # `sleepjax adapt` stage 2: LR scale of the pretrained encoder (all but tokenizers)
  c.adapt.tokenizer_lr_scale = 0.5  # `sleepjax adapt` stage 2: LR scale of the pretrained signal tokenizers
  c.adapt.new_lr_scale = 1.0  # `sleepjax adapt`: LR scale of the new tokenizers (and new modalities' table rows)
  c.adapt.new_pair_share = (1.0, 0.7, 0.0)  # `sleepjax adapt` stage 2: share of pairs with a new modality ...
  c.adapt.new_pair_share_at = (0.25, 0.5, 1.0)  # ... at these fractions of stage 2 (linear between; stage 1: 1.0)
  c.eval = ml_collections.ConfigDict()
  c.eval.checkpoint_step = 0  # > 0: evaluate/caption this step; 0: the newest that restores
  c.eval.modalities = ()  # the modalities the encoder is shown, the others absent as in a night without them, in every task and split (e.g. cardio-respiratory only: ecg, spo2, airflow, resp_effort); empty: all the checkpoint's; one it lacks is refused
  c.eval.tasks = ("staging", "few_shot", "site", "robustness", "events", "clinical", "retrieval")  # tasks `sleepjax eval` runs (also: yasa, sleeplm, sequence, supervised, finetune; README: Evaluation)
  c.eval.train_split = "train"  # probes, regressors and heads are fitted here
  c.eval.val_split = "val"  # choices: probe l2, event thresholds, ridge alpha
  c.eval.test_split = "test"  # every reported number
  c.eval.allow_split_mismatch = False  # True: evaluate on data whose split hash differs (warns)
  c.eval.probe_steps = 300  # staging probe optimiser steps
  c.eval.probe_lr = 0.05  # staging probe learning rate
  c.eval.probe_l2 = 1e-3  # staging probe L2 penalty
  c.eval.probe_l2_grid = (1e-4, 1e-3, 1e-2)  # chosen on val macro-F1
  c.eval.fractions = (0.01, 0.1, 1.0)  # few-shot: fractions of the training epochs labelled
  c.eval.seeds = (0, 1, 2)  # few-shot draws per fraction (mean +- sd)
  c.eval.train_sites = ()  # site task: probe sites (empty = the first site)
  c.eval.test_sites = ()  # site task: test sites (empty = every other site)
  c.eval.robustness_max_subsets = 32  # 2^k - 1 subsets up to this many, else a seeded sample
  c.eval.robustness_seed = 0  # robustness task: seed of the sampled subsets
  c.eval.event_kinds = ("apnea", "hypopnea", "desaturation", "arousal")  # events task kinds
  c.eval.event_min_iou = 0.2  # events task: overlap that makes a predicted event a hit
  c.eval.event_thresholds = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # events task: detector thresholds (chosen on val)
  c.eval.ridge_alphas = (0.1, 1.0, 10.0, 100.0, 1000.0)  # clinical task: ridge penalties (chosen on val)
  c.eval.audit_seed = 0  # audit task: seed of the random half of epochs the probes are fitted on
  c.eval.audit_time_bins = 4  # audit task: time-of-night classes (equal parts of each night)
  c.eval.retrieval_pool = 256  # test epochs per retrieval pool (chance R@1 = 1 / pool)
  c.eval.retrieval_ks = (1, 5, 10)  # retrieval task: recall@k reported
  c.eval.finetune_steps = 200  # supervised (from scratch) / finetune (frozen tokenizers) steps
  c.eval.finetune_lr = 1e-3  # supervised / finetune AdamW learning rate
  c.eval.finetune_fractions = (0.01, 1.0)  # label fractions for supervised / finetune
  c.eval.finetune_seeds = (0,)  # supervised / finetune seeds (mean +- sd)
  c.eval.finetune_lora_rank = 0  # finetune: LoRA rank on the frozen encoder's attention projections (0: off, tokenizers-frozen fine-tuning)
  c.eval.finetune_lora_alpha = 16.0  # finetune: LoRA alpha (adapters scaled by alpha / rank)
  c.eval.finetune_lora_targets = ("q", "k", "v")  # finetune: attention kernels LoRA adapts (q, k, v, out)
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
  # SleepLM captioning (`sleepjax caption`) and its `sleeplm` eval task
  c.eval.caption_group = "stage_event"  # `sleepjax caption`: which group to write (or "all")
  c.eval.beams = 1  # caption beam width (1 = greedy)
  c.eval.max_caption_len = 48  # longest generated caption (tokens)
  c.eval.caption_epochs = 6  # `sleepjax caption`: how many epochs of the recording (0 = all)
  c.eval.caption_stride = 1  # `sleepjax caption`: every n-th epoch from the first
  c.eval.caption_eval_epochs = 32  # `sleeplm` eval task: test epochs captioned and scored
  c.eval.caption_eval_group = "all"  # `sleeplm` eval task: caption group(s) generated and scored
  c.eval.conditioning_epochs = 256  # `sleeplm` eval task: test epochs of the conditioning measures
  c.eval.caption_examples = 6  # `sleeplm` eval task: example captions in the report

  c.ssl = ml_collections.ConfigDict()  # `sleepjax bench ssl` (configs/ssl.py)
  c.ssl.pretrain_seeds = (0,)  # `sleepjax bench ssl`: pretraining runs (W/ssl: the first seed, W/ssl-seed<n>: the others)

  c.wearable = ml_collections.ConfigDict()  # `sleepjax bench wearable` (configs/wearable.py)
  c.wearable.seeds = (0,)  # `sleepjax bench wearable`: training seeds (pretraining, adaptation, from-scratch runs)

  c.bench = ml_collections.ConfigDict()  # `sleepjax bench data`: its synthetic cohort and rows
  c.bench.subjects = 8  # `sleepjax bench data`: synthetic subjects prepared for the benchmark
  c.bench.hours = 8.0  # `sleepjax bench data`: hours per synthetic night
  c.bench.segment_epochs = 240  # `sleepjax bench data`: epochs per stored segment
  c.bench.seconds = 3.0  # `sleepjax bench data`: seconds per row
  c.bench.max_workers = 0  # `sleepjax bench data`: worker-process rows up to this many (0: every core)
  return c
