"""Modality tokenizer: raw 30-s epochs of one modality -> one width-D token per epoch."""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import dense
from sleepjax.modalities import EPOCH_SECONDS


class ModalityTokenizer(nnx.Module):
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

  def __call__(self, x_BxWxCxS: jax.Array, present_BxWxC: jax.Array) -> jax.Array:
    B, W, C, S = x_BxWxCxS.shape
    x_BxWxCxNxL = x_BxWxCxS.astype(self.dtype).reshape(B, W, C, S // self.patch, self.patch)
    h = jax.nn.gelu(self.patch_in(x_BxWxCxNxL))
    h = jax.nn.gelu(self.patch_mid(h))
    # Mean and log-variance over patches: average energy and how bursty it is within the epoch.
    mean_BxWxCxF = h.mean(axis=3)
    logvar_BxWxCxF = jnp.log(h.var(axis=3) + 1e-4)
    feats_BxWxCx2F = jnp.concatenate([mean_BxWxCxF, logvar_BxWxCxF], -1)
    feats_BxWxCx2F = jnp.where(present_BxWxC[..., None], feats_BxWxCx2F, 0.0)  # absent: zero
    return self.mix(feats_BxWxCx2F.reshape(B, W, -1))
