"""Signal tokenizers: raw 30-s epochs of one modality -> one token per epoch (the caption
tokenizer, SentencePiece over text, is `sleepjax.caption_tokenizer`).

`EpochSignalTokenizer` is sleep2vec's (`model.signal_tokenizer="epoch"`, the sleep2vec presets);
`PatchSignalTokenizer` is a sub-epoch filter-bank tokenizer (`model.signal_tokenizer="patch"`,
the base config and the CPU demo).
Both zero absent channels before any weight sees them.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import dense, dropout, layer_norm
from sleepjax.modalities import EPOCH_SECONDS


class EpochSignalTokenizer(nnx.Module):
  """sleep2vec: the flattened epoch x (channels * samples values) ->
  `LayerNorm(Dropout(Linear(2D->D)(SiLU(Linear(in->2D)(x)))) + Linear(in->D)(x))`, the dropout
  (`dropout`, training only: with an `rng`) on the MLP branch, where the reference has it.

  A multi-channel modality (two EEG derivations) widens the input: in = channels * rate * 30.
  """

  def __init__(self, rate: int, channels: int, d: int, *, dtype, rngs: nnx.Rngs,
               dropout: float = 0.0):
    n_in = channels * rate * EPOCH_SECONDS
    self.up = dense(n_in, 2 * d, ("patch", "mlp"), dtype=dtype, rngs=rngs)
    self.down = dense(2 * d, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.skip = dense(n_in, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
    self.norm = layer_norm(d, rngs=rngs)
    self.dtype, self.dropout_rate = dtype, dropout

  def __call__(self, x_BxWxCxS: jax.Array, present_BxWxC: jax.Array,
               rng: jax.Array | None = None) -> jax.Array:
    B, W, C, S = x_BxWxCxS.shape
    x_BxWxCxS = jnp.where(present_BxWxC[..., None], x_BxWxCxS.astype(self.dtype), 0)
    x_BxWxI = x_BxWxCxS.reshape(B, W, C * S)
    mlp_BxWxD = dropout(self.down(jax.nn.silu(self.up(x_BxWxI))), self.dropout_rate, rng)
    return self.norm(mlp_BxWxD + self.skip(x_BxWxI))


class PatchSignalTokenizer(nnx.Module):
  """Sub-epoch patches (`patch_seconds` long) -> shared MLP -> mean over the epoch -> channel mix.

  The patch MLP acts as a learned filter bank whose pooled activations measure band energy, so the
  token does not depend on where in the epoch a wave happens to start.
  """

  def __init__(self, rate: int, channels: int, features: int, d: int, patch_seconds: int, *,
               dtype, rngs: nnx.Rngs):
    if EPOCH_SECONDS % patch_seconds:
      raise ValueError(f"patch_seconds={patch_seconds} must divide {EPOCH_SECONDS}")
    self.patch = rate * patch_seconds
    self.patch_in = dense(self.patch, features, ("patch", "features"), dtype=dtype, rngs=rngs)
    self.patch_mid = dense(features, features, ("features", "features"), dtype=dtype, rngs=rngs)
    self.mix = dense(channels * 2 * features, d, ("features", "embed"), dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x_BxWxCxS: jax.Array, present_BxWxC: jax.Array,
               rng: jax.Array | None = None) -> jax.Array:
    del rng  # no dropout in this stem (`model.dropout` acts in the transformer only)
    B, W, C, S = x_BxWxCxS.shape
    x_BxWxCxS = jnp.where(present_BxWxC[..., None], x_BxWxCxS.astype(self.dtype), 0)
    x_BxWxCxJxS = x_BxWxCxS.reshape(B, W, C, S // self.patch, self.patch)
    h = jax.nn.gelu(self.patch_in(x_BxWxCxJxS))
    h = jax.nn.gelu(self.patch_mid(h)).astype(jnp.float32)
    # Mean and log-variance over patches: average energy and how bursty it is within the epoch.
    mean_BxWxCxF = h.mean(axis=3)
    logvar_BxWxCxF = jnp.log(h.var(axis=3) + 1e-4)
    feats_BxWxCx2F = jnp.concatenate([mean_BxWxCxF, logvar_BxWxCxF], -1)
    feats_BxWxCx2F = jnp.where(present_BxWxC[..., None], feats_BxWxCx2F, 0.0)  # absent: zero
    return self.mix(feats_BxWxCx2F.reshape(B, W, -1))


def make_signal_tokenizer(config, rate: int, channels: int, d: int, *, dtype, rngs: nnx.Rngs):
  if config.signal_tokenizer == "epoch":
    return EpochSignalTokenizer(rate, channels, d, dtype=dtype, rngs=rngs,
                                dropout=config.dropout)
  if config.signal_tokenizer == "patch":
    return PatchSignalTokenizer(rate, channels, config.stem_features, d, config.patch_seconds,
                          dtype=dtype, rngs=rngs)
  raise ValueError(f"model.signal_tokenizer must be 'epoch' or 'patch', got {config.signal_tokenizer!r}")
