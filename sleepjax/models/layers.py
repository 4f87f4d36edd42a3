"""Transformer building blocks with logical axis names on every parameter."""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.sharding import constrain


def dense(d_in: int, d_out: int, axes: tuple[str, str], *, dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)))


def layer_norm(d: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      d, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))


def rope(x_BxTxHxK: jax.Array, positions_T: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
  """Rotary position embedding over the time axis."""
  k = x_BxTxHxK.shape[-1] // 2
  freq_K = max_wavelength ** (-jnp.arange(k, dtype=jnp.float32) / k)
  angle_TxK = positions_T[:, None].astype(jnp.float32) * freq_K[None]
  sin, cos = jnp.sin(angle_TxK)[None, :, None], jnp.cos(angle_TxK)[None, :, None]
  x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BxTxHxK.dtype)


class Attention(nnx.Module):
  def __init__(self, d: int, heads: int, *, dtype, rngs: nnx.Rngs):
    if d % heads:
      raise ValueError(f"width {d} not divisible by {heads} heads")
    self.heads, self.head_dim = heads, d // heads
    self.qkv = dense(d, 3 * d, ("embed", "heads"), dtype=dtype, rngs=rngs)
    self.out = dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None) -> jax.Array:
    B, T, D = x_BxTxD.shape
    qkv = self.qkv(x_BxTxD).reshape(B, T, 3, self.heads, self.head_dim)
    positions_T = jnp.arange(T)
    q_BxTxHxK = rope(qkv[:, :, 0], positions_T)
    k_BxTxHxK = rope(qkv[:, :, 1], positions_T)
    v_BxTxHxK = qkv[:, :, 2]
    mask = None if mask_BxT is None else mask_BxT[:, None, None, :]
    y_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask=mask)
    return self.out(y_BxTxHxK.reshape(B, T, D))


class Block(nnx.Module):
  """Pre-LN transformer block."""

  def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs):
    self.norm1 = layer_norm(d, dtype=dtype, rngs=rngs)
    self.attn = Attention(d, heads, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(d, dtype=dtype, rngs=rngs)
    self.up = dense(d, mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.down = dense(mlp, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
    x_BxTxD = x_BxTxD + self.attn(self.norm1(x_BxTxD), mask_BxT)
    h_BxTxF = constrain(jax.nn.gelu(self.up(self.norm2(x_BxTxD))), ("activation_batch", "activation_time", "activation_mlp"))
    return constrain(x_BxTxD + self.down(h_BxTxF), ("activation_batch", "activation_time", "activation_embed"))


class Transformer(nnx.Module):
  def __init__(self, d: int, depth: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(d, heads, mlp, dtype=dtype, rngs=rngs) for _ in range(depth)])
    self.norm = layer_norm(d, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
    for block in self.blocks:
      x_BxTxD = block(x_BxTxD, mask_BxT)
    return self.norm(x_BxTxD)
