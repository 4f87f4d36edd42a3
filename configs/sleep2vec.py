"""sleep2vec presets (arXiv 2602.13857): the published encoder, DAS-H InfoNCE, pair-first sampling.

  --config=configs/sleep2vec.py:dense        768 x 12, 16 heads, MLP 3072 (~134 M parameters)
  --config=configs/sleep2vec.py:large        1024 x 16, 16 heads, tokenizers 768 -> 1024 (~217 M)
  --config=configs/sleep2vec.py:size=<S>     a row of SIZES (scaling sweeps), e.g. size=20m
  --config=configs/sleep2vec.py:smoke        CPU demo size (configs/common.py's data and model),
                                             with the preset's objective and sampling
  --config=configs/sleep2vec.py:dense_reference   dense as published (REFERENCE below)
  --config=configs/sleep2vec.py:large_reference   large as published (+ its 768-wide head)

The reference presets reproduce the published code's architecture (JinZr/sleep2vec: RoFormer):
post-LN with LayerNorm eps 1e-12 and an input LayerNorm, dropout 0.1 (tokenizer MLP branch,
encoder input, attention probabilities, attention and MLP outputs; training only), no modality
embedding, a Linear from the tokenizers to the encoder with the mask token before it. The default
presets (pre-LN, no dropout, a modality embedding) train faster per step (BENCHMARKS.md,
"Reference vs default encoder"); they are not the published model.

Parameter counts are for sleep2vec's own inputs: eeg, eog, emg, ecg as single-channel 3840-sample
epochs and heart_rate, spo2, airflow, nasal_pressure, resp_effort as 120-sample ones. A
multi-channel modality (two EEG derivations) widens its tokenizer's input (channels x samples),
which adds tokenizer parameters.
"""

import ml_collections

from sleepjax.configs import common

# name -> (width, depth, heads, mlp, signal_tokenizer_width; 0 = width). Approximate parameter counts
# with sleep2vec's inputs in the comments (tokenizers dominate the smallest sizes: the nine
# tokenizers read 4 x 3840 + 5 x 120 input values).
SIZES = {
    "1m": (16, 2, 2, 64, 0),  # 0.8 M
    "5m": (64, 4, 4, 256, 0),  # 3.4 M
    "20m": (192, 6, 6, 768, 0),  # 14 M
    "50m": (384, 8, 8, 1536, 0),  # 42 M
    "dense": (768, 12, 16, 3072, 0),  # 133 M (paper: 134 M)
    "large": (1024, 16, 16, 3072, 768),  # 217 M (paper: 217 M)
    "600m": (1536, 20, 16, 6144, 768),  # 620 M
    "1b": (2048, 24, 16, 8192, 1024),  # 1.26 B
}
# The published encoder's layout (model keys; see the module docstring).
REFERENCE = dict(norm="post", norm_eps=1e-12, dropout=0.1, attention_dropout=0.1,
                 modality_embed=False, token_proj="always")
NINE = ("eeg", "eog", "emg", "ecg", "heart_rate", "spo2", "airflow", "nasal_pressure",
        "resp_effort")


def get_config(arg: str = "dense") -> ml_collections.ConfigDict:
  if arg == "smoke":
    c = common.get_config()
    c.objective.pair_strategy = "pair_first"
    c.objective.loss = "dash"
    c.data.modality_sampling = "pair_first"
    return c
  reference = arg in ("dense_reference", "large_reference")
  if arg.startswith("size="):
    size = arg.partition("=")[2]
  elif arg in ("dense", "large") or reference:
    size = arg.removesuffix("_reference")
  else:
    raise ValueError(f"configs/sleep2vec.py: unknown arg {arg!r} (dense, large, dense_reference, "
                     f"large_reference, smoke, size=<{'|'.join(SIZES)}>)")
  if size not in SIZES:
    raise ValueError(f"configs/sleep2vec.py: unknown size {size!r}; choose from {list(SIZES)}")

  c = common.get_config()
  width, depth, heads, mlp, tokenizer_width = SIZES[size]
  c.model.update(dict(family="sleep2vec", signal_tokenizer="epoch",
                      signal_tokenizer_width=tokenizer_width, width=width, depth=depth,
                      heads=heads, mlp=mlp, norm="pre", proj_hidden=0, proj_dim=128, head_norm="batch", mask_fraction=0.15, dtype="bfloat16",
                      # cuDNN flash attention on GPUs (BENCHMARKS.md has the measured gain), XLA's
                      # attention elsewhere.
                      attention="auto",
                      # bf16 residual stream and norm outputs (float32 statistics), as MaxText
                      # keeps activations: the float32 stream's norms and adds were the largest
                      # memory-bound work of the dense step (BENCHMARKS.md, "Where the time goes").
                      residual_dtype="compute"))
  if reference:
    c.model.update(REFERENCE)
    c.model.proj_hidden = 768  # the reference's head is 768 wide at both sizes
  c.objective.update(dict(loss="dash", pair_strategy="pair_first", negatives="per_step",
                          temperature=0.2, hard_scale=0.1, sigma_age=20.0, alpha_sex=0.8,
                          gamma_same=1.3, gamma_diff=0.8, eps=1e-6))

  c.prep.modalities = NINE
  c.prep.segment_epochs = 120  # >= the training window
  c.prep.min_duration_s = 3600
  c.data.window_epochs = 120  # one hour of context
  c.data.global_batch = 320  # per device in the paper: scale with the mesh (--config.data.global_batch)
  c.data.modality_sampling = "pair_first"

  # Paper optimizer: AdamW b = (0.9, 0.95), lr 5e-5, wd 0.01 (not on norms/biases), warmup 3 %,
  # cosine to 0.1 lr, clip 1.0.
  c.train.steps = 100_000
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.train.val_every = 1000  # > 0: val_loss (eval mode, fixed batches and keys) every N steps
  c.train.ema_momentum = 0.996
  c.optim.lr = 5e-5
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0
  c.optim.warmup_fraction = 0.03  # of train.steps
  c.optim.end_lr_fraction = 0.1
  if size in ("600m", "1b"):
    # FSDP: parameters and AdamW state sharded over every device (ZeRO-3); a 1b model's f32
    # params + two moments + EMA are ~20 GB, too much to replicate on every chip.
    c.mesh.data, c.mesh.fsdp = 1, -1
  return c
