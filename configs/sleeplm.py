"""SleepLM (ReCoCa): presets and the size table for sweeps.

`--config=configs/sleeplm.py:base` is SleepLM-Base's shape (385.4 M parameters at a 49,408-token
vocabulary, + 17.1 M for the reconstruction decoder); `:smoke` trains on this CPU in minutes (the
demo); `:tiny` is the tests' size; any key of SIZES names a sweep size (smoke's data and schedule).
The model's vocabulary is `text.vocab_size`, the size the caption tokenizer is trained with (an
upper bound on its pieces).
"""

import ml_collections

# name: (width, heads, signal depth (dual blocks), text depth, decoder depth)
SIZES = {
    "tiny": (32, 2, 1, 1, 1),
    "smoke": (64, 4, 1, 2, 2),
    "small": (256, 4, 2, 4, 4),
    "medium": (512, 8, 3, 8, 8),
    "base": (768, 12, 3, 12, 12),
    "large": (1024, 16, 4, 24, 24),
    "xl": (1536, 16, 6, 24, 24),
}
CHANNELS = ("ecg:0", "resp_effort:1", "resp_effort:0", "airflow:0", "eog:0", "eog:1", "eeg:1",
            "eeg:0", "emg:0", "position:0")


def model_config(size: str) -> ml_collections.ConfigDict:
  width, heads, signal_depth, text_depth, decoder_depth = SIZES[size]
  m = ml_collections.ConfigDict()
  m.family = "sleeplm"
  m.size = size
  m.channels = CHANNELS  # "modality:channel index" entries; absent modalities are zero + masked
  m.rate = 64  # Hz, the encoder's input rate (128 Hz halved, 32 Hz doubled, on the fly)
  m.embed_dim = 512 if width >= 512 else width  # contrastive space
  m.recon_depth = 2  # 0: no reconstruction decoder
  m.dtype = "float32"
  m.signal = dict(width=width, heads=heads, depth=signal_depth, mlp_ratio=3.0, patch=16,
                  conv_dim=256 if width >= 256 else width, decoder_tokens=32)
  m.text = dict(width=width, heads=heads, depth=text_depth, mlp_ratio=4.0, context=256)
  m.decoder = dict(width=width, heads=heads, depth=decoder_depth, mlp_ratio=4.0, prefix_len=1)
  return m


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
  size = arg or "smoke"
  if size not in SIZES:
    raise ValueError(f"configs/sleeplm.py: unknown arg {arg!r} (one of {', '.join(SIZES)})")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.synthetic = dict(n_subjects=12, n_sites=2, hours=1.5, seed=0, workers=1)

  c.prep = ml_collections.ConfigDict()
  c.prep.raw_dir = ""
  c.prep.modalities = ("eeg", "eog", "emg", "ecg", "spo2", "airflow", "resp_effort")
  c.prep.channel_map = "generic"
  c.prep.segment_epochs = 10
  c.prep.min_duration_s = 1800
  c.prep.shard_records = 64
  c.prep.compression = "uncompressed"
  c.prep.split_fractions = dict(train=0.7, val=0.15, test=0.15)
  c.prep.seed = 0
  c.prep.workers = 2

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""
  c.data.window_epochs = 2  # every epoch is a sample: a batch holds global_batch * window epochs
  c.data.global_batch = 32
  c.data.modality_sampling = "all"
  c.data.pair_weights = {}
  c.data.modality_dropout = 0.0
  c.data.min_modalities = 1
  c.data.verify_shards = "stamp"
  c.data.caption_len = 128  # tokens per caption (BOS + pieces + EOS, cut beyond)
  c.data.read_threads = 2
  c.data.prefetch = 4
  c.data.workers = 0

  c.text = ml_collections.ConfigDict()
  c.text.vocab_size = 512

  c.model = model_config(size)

  c.objective = ml_collections.ConfigDict()
  c.objective.lambda_con = 1.0
  c.objective.lambda_cap = 2.0
  c.objective.lambda_rec = 1.0
  c.objective.caption_groups = "random"  # random: one group per epoch per step | all

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.05
  c.optim.b2 = 0.98
  c.optim.grad_clip = 1.0

  c.mesh = dict(data=-1, fsdp=1, tensor=1)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300
  c.train.stop_after_steps = 0
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3
  c.train.resume_step = 0  # > 0: resume this step (newer ones set aside); 0: newest that restores
  c.train.val_every = 0  # > 0: val_loss (eval mode, fixed batches and keys) every N steps
  c.train.val_batches = 4  # validation batches val_loss averages over

  c.eval = ml_collections.ConfigDict()
  c.eval.checkpoint_step = 0  # > 0: evaluate/caption this step; 0: the newest that restores
  c.eval.tasks = ("staging", "few_shot", "site", "robustness", "events", "clinical", "retrieval",
                  "sleeplm")
  c.eval.train_split = "train"
  c.eval.test_split = "test"
  c.eval.probe_steps = 300
  c.eval.probe_lr = 0.05
  c.eval.probe_l2 = 1e-3
  c.eval.caption_group = "stage_event"  # `sleepjax caption`: which group to write (or "all")
  c.eval.beams = 1  # 1 = greedy
  c.eval.max_caption_len = 48
  c.eval.caption_epochs = 6  # `sleepjax caption`: how many epochs of the recording (0 = all)
  c.eval.caption_stride = 1  # `sleepjax caption`: every n-th epoch from the first
  c.eval.caption_eval_epochs = 32  # `sleeplm` eval task: test epochs captioned and scored
  c.eval.caption_eval_group = "all"  # `sleeplm` eval task: caption group(s) generated and scored
  c.eval.caption_examples = 6  # `sleeplm` eval task: example captions in the report

  if size in ("smoke", "tiny"):  # CPU: 1-s patches (4x fewer signal tokens), one epoch per window
    c.model.signal.patch = 64
    c.data.window_epochs = 1
    c.train.steps, c.optim.lr = 150, 2e-3
    c.train.ema_momentum = 0.0  # no EMA: eval uses the weights trained last (short schedule)
    # The demo's eval: one probe and the text tasks (zero-shot, retrieval, captions).
    c.eval.tasks = ("staging", "sleeplm")
    c.eval.probe_l2_grid = (1e-3,)
    c.eval.caption_epochs, c.eval.caption_stride = 8, 20  # across the night: several stages
  if size == "tiny":
    c.synthetic = dict(n_subjects=6, n_sites=2, hours=1.0, seed=0, workers=1)
    c.prep.split_fractions = dict(train=0.5, val=0.17, test=0.33)
    c.data.global_batch, c.data.caption_len = 8, 48
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 6, 2, 3
    c.optim.warmup_steps = 2
    c.eval.probe_steps = 50
    c.eval.caption_epochs, c.eval.caption_stride, c.eval.max_caption_len = 2, 1, 16
  elif size not in ("smoke", "tiny"):  # accelerator sizes: the released model's text length
    c.text.vocab_size = 49_408
    c.data.caption_len = 256 if size == "base" else 128
    c.model.dtype = "bfloat16"
  return c
