"""SleepLM (ReCoCa): signal encoder + text tower + caption decoder + reconstruction decoder.

One sample is one 30-s epoch: a batch of windows [B, W] is N = B*W samples.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleepjax.models.layers import DTYPES, check_remat
from sleepjax.models.sleeplm import inputs
from sleepjax.models.sleeplm.signal import ReconDecoder, SignalEncoder
from sleepjax.models.sleeplm.text import CaptionDecoder, TextTower
from sleepjax.modalities import EPOCH_SECONDS

# Caption groups, one learnable decoder prefix each, in the order batches carry them
# (`data_prep.captions.GROUPS`, the manifest's `caption_groups`).
GROUPS = ("stage_event", "brain", "cardiac", "respiratory", "somatic")
MAX_LOGIT_SCALE = 100.0  # the CLIP scale's bound (OpenCLIP's clamp)


def bounded_log_scale(raw: jax.Array) -> jax.Array:
  """The logit-scale parameter -> log of the CLIP scale, in (-inf, log 100).

  A soft minimum, log 100 - softplus(log 100 - raw): ~raw well below the bound, never above it, and
  a gradient everywhere (`minimum` on the use has none once the parameter passes the bound, so an
  optimiser leaves it there for good)."""
  top = jnp.log(MAX_LOGIT_SCALE)
  return top - jax.nn.softplus(top - raw)


def raw_log_scale(scale: float) -> float:
  """The parameter value whose `bounded_log_scale` is log(scale), for 0 < scale < 100."""
  top = np.log(MAX_LOGIT_SCALE)
  return float(top - np.log(np.expm1(top - np.log(scale))))


class SleepLM(nnx.Module):
  def __init__(self, c, vocab: int, *, rngs: nnx.Rngs):
    """c: config.model (signal, text, decoder, recon sub-configs; see configs/sleeplm.py)."""
    check_remat(c.remat)
    dtype = DTYPES[c.dtype]
    self.channels = inputs.parse_channels(c.channels)
    self.rate = c.rate
    n = len(self.channels)
    # Every tower's attention through model.attention, its blocks looped or scanned, rematerialised
    # under model.remat (the loop's parameter tree is the one checkpoints before scan_blocks hold).
    kw = dict(dtype=dtype, rngs=rngs, attention=c.attention, scan=c.scan_blocks, remat=c.remat)
    self.signal = SignalEncoder(n, c.signal, c.embed_dim, **kw)
    self.text = TextTower(vocab, c.text, c.embed_dim, **kw)
    self.decoder = CaptionDecoder(vocab, c.decoder, len(GROUPS), **kw)
    self.recon = (ReconDecoder(c.signal.width, c.signal.heads, c.recon_depth, n,
                               c.rate * EPOCH_SECONDS, **kw)
                  if c.recon_depth else None)
    self.logit_scale = nnx.Param(jnp.asarray(raw_log_scale(1 / 0.07), jnp.float32))

  def log_scale(self) -> jax.Array:
    """log of the CLIP logit scale (starts at log 1/0.07, bounded by log 100)."""
    return bounded_log_scale(self.logit_scale[...])

  def inputs(self, signals: dict, masks: dict) -> tuple[jax.Array, jax.Array]:
    """-> x [B, W, K, rate*30] z-scored, present [B, W, K]."""
    return inputs.assemble(signals, masks, self.channels, self.rate)

  def encode_signal(self, x_NxCxS, present_NxC) -> dict:
    return self.signal(x_NxCxS, present_NxC)

  def encode_text(self, tokens_NxL, valid_NxL) -> dict:
    return self.text(tokens_NxL, valid_NxL)

  def caption_logits(self, tokens_NxL, valid_NxL, group_N, memory_NxMxD) -> jax.Array:
    return self.decoder(self.text(tokens_NxL, valid_NxL)["states"], group_N, memory_NxMxD)

  def reconstruct(self, memory_NxMxD) -> jax.Array:
    return self.recon(memory_NxMxD)
