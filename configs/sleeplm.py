"""SleepLM (ReCoCa): presets and the size table for sweeps.

`--config=configs/sleeplm.py:base` is SleepLM-Base's shape (385.4 M parameters at a 49,408-token
vocabulary, + 17.1 M for the reconstruction decoder); `:smoke` trains on this CPU in minutes (the
demo: the recipe whose decoder reads the signal, BENCHMARKS.md "SleepLM conditioning"); `:tiny` is
the tests' size; any key of SIZES names a sweep size (smoke's data and schedule).
The model's vocabulary is `text.vocab_size`, the size the caption tokenizer is trained with (an
upper bound on its pieces).
"""

import ml_collections

from sleepjax.configs import common

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


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
  size = arg or "smoke"
  if size not in SIZES:
    raise ValueError(f"configs/sleeplm.py: unknown arg {arg!r} (one of {', '.join(SIZES)})")
  c = common.get_config()
  c.data.window_epochs = 2  # every epoch is a sample: a batch holds global_batch * window epochs
  c.data.modality_dropout = 0.0
  c.data.min_modalities = 1
  c.data.caption_len = 128  # tokens per caption (BOS + pieces + EOS, cut beyond)

  # SleepLM's own model and objective sections (the base's are sleep2vec's).
  width, heads, signal_depth, text_depth, decoder_depth = SIZES[size]
  c.model = ml_collections.ConfigDict()
  c.model.family = "sleeplm"  # model family (a key of sleepjax.families.FAMILIES)
  c.model.size = size  # SleepLM size-table row this config was built from
  c.model.channels = CHANNELS  # "modality:channel index" entries; absent modalities are zero + masked
  c.model.rate = 64  # Hz, the encoder's input rate (128 Hz halved, 32 Hz doubled, on the fly)
  c.model.embed_dim = 512 if width >= 512 else width  # contrastive space (shared signal/text embedding)
  c.model.recon_depth = 2  # reconstruction decoder layers (0: no reconstruction decoder)
  c.model.dtype = "float32"  # matmul (compute) dtype: bfloat16 on accelerators
  c.model.param_dtype = "float32"  # step's weights: float32 or bfloat16 (cast of a float32 master)
  c.model.attention = "xla"  # xla | cudnn (flash attention, GPU, bf16) | auto (cudnn on GPU in bf16)
  c.model.remat = "none"  # none | full | save_dots | save_attn_proj: each tower's blocks (per decoder layer)
  c.model.scan_blocks = False  # each tower's blocks stacked under nnx.scan (compile time flat in depth; another checkpoint tree)
  c.model.signal = ml_collections.ConfigDict()  # the signal encoder
  c.model.signal.width = width  # signal encoder width
  c.model.signal.heads = heads  # signal encoder attention heads
  c.model.signal.depth = signal_depth  # signal encoder dual blocks
  c.model.signal.mlp_ratio = 3.0  # signal encoder SwiGLU width / model width
  c.model.signal.patch = 16  # samples per patch (16 = 0.25 s at 64 Hz)
  c.model.signal.conv_dim = 256 if width >= 256 else width  # Conv1d patch features
  c.model.signal.decoder_tokens = 32  # pooled tokens the decoders attend to
  c.model.signal.decoder_memory = "pooled"  # decoder memory: pooled, pooled+channels or pooled+tokens
  c.model.text = ml_collections.ConfigDict()  # the text tower
  c.model.text.width = width  # text tower width
  c.model.text.heads = heads  # text tower attention heads
  c.model.text.depth = text_depth  # text tower layers
  c.model.text.mlp_ratio = 4.0  # text tower MLP width / model width
  c.model.text.context = 256  # text tower context (tokens)
  c.model.decoder = ml_collections.ConfigDict()  # the caption decoder
  c.model.decoder.width = width  # caption decoder width
  c.model.decoder.heads = heads  # caption decoder attention heads
  c.model.decoder.depth = decoder_depth  # caption decoder layers
  c.model.decoder.mlp_ratio = 4.0  # caption decoder MLP width / model width
  c.model.decoder.prefix_len = 1  # caption-group prefix tokens

  c.objective = ml_collections.ConfigDict()
  c.objective.lambda_con = 1.0  # SleepLM: weight of the contrastive loss
  c.objective.lambda_cap = 2.0  # SleepLM: weight of the caption loss
  c.objective.lambda_rec = 1.0  # SleepLM: weight of the reconstruction loss
  c.objective.caption_groups = "random"  # random: one group per epoch per step | all
  # off: it measured no gain on the smoke preset (BENCHMARKS.md, SleepLM conditioning)
  c.objective.content_positives = False  # True: captions saying the same in other words are not CLIP negatives

  c.optim.lr = 1e-3
  c.train.ema_momentum = 0.996
  c.eval.tasks = ("staging", "few_shot", "site", "robustness", "events", "clinical", "retrieval",
                  "sleeplm")

  if size in ("smoke", "tiny"):  # CPU: 1-s patches (4x fewer signal tokens), one epoch per window
    c.model.signal.patch = 64
    c.data.window_epochs = 1
    c.train.steps, c.optim.lr = 450, 2e-3
    # At this width the 32 pooled tokens are one vector to the decoder (their epoch-specific part is
    # 14 % of the norm), so captions ignore the signal; the channel-patch tokens are not, and with
    # 450 steps the captions name the epoch's stage (BENCHMARKS.md, SleepLM conditioning). tiny
    # too, so the tests train the demo's memory (~5 % more CPU for its tests: BENCHMARKS.md).
    c.model.signal.decoder_memory = "pooled+tokens"
    c.train.ema_momentum = 0.0  # no EMA: eval uses the weights trained last (short schedule)
    # The demo's eval: one probe and the text tasks (zero-shot, retrieval, captions).
    c.eval.tasks = ("staging", "sleeplm")
    c.eval.probe_l2_grid = (1e-3,)
    c.eval.caption_epochs, c.eval.caption_stride = 8, 20  # across the night: several stages
  if size == "tiny":
    c.synthetic.n_subjects, c.synthetic.hours = 6, 1.0
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
