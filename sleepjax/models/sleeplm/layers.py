"""SleepLM's attention modules on the shared primitives (`models/layers.py`): multi-head attention
(self / cross, interleaved RoPE, KV cache) through the shared attention core (`layers.attend`:
jax.nn.dot_product_attention under `model.attention`, as sleep2vec's), learnable-frequency RoPE,
attentional pooler, pre-LN residual blocks.

Parameters carry logical axis names (see `sleepjax.sharding.RULES`); norms, softmax and RoPE run
in float32, matmuls in the configured dtype.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import (MLP, attend, attention_implementation, dense, gelu, layer_norm,
                                    rotate)


class LearnedRope(nnx.Module):
  """RoPE whose frequencies are parameters (channel attention: positions are channel indices)."""

  def __init__(self, head_dim: int, *, rngs: nnx.Rngs):
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("qkv",))
    self.freq = nnx.Param(init(rngs.params(), (head_dim // 2,)))

  def __call__(self, positions_T: jax.Array) -> jax.Array:
    return positions_T.astype(jnp.float32)[:, None] * self.freq[...][None]


class MultiHeadAttention(nnx.Module):
  """Separate q / k / v / out projections (self- or cross-attention).

  `qkv_bias`: the encoder's attention has no q/k/v bias (out has one); torch-style
  nn.MultiheadAttention (poolers, text, decoder) has biases everywhere. `attention`:
  `model.attention` (`layers.attention_implementation`).
  """

  def __init__(self, d: int, heads: int, *, dtype, rngs: nnx.Rngs, qkv_bias: bool = True,
               d_kv: int | None = None, attention: str = "xla"):
    if d % heads:
      raise ValueError(f"width {d} not divisible by {heads} heads")
    d_kv = d_kv or d
    self.heads, self.head_dim = heads, d // heads
    self.implementation = attention_implementation(attention, dtype)
    self.q = dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.k = dense(d_kv, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.v = dense(d_kv, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.out = dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)

  def split(self, x):
    return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

  def kv(self, x_BxUxD: jax.Array, angle=None) -> tuple[jax.Array, jax.Array]:
    k, v = self.split(self.k(x_BxUxD)), self.split(self.v(x_BxUxD))
    return (k if angle is None else rotate(k, angle, interleaved=True)), v

  def __call__(self, x_BxTxD: jax.Array, kv_BxUxD: jax.Array | None = None, mask=None,
               angle=None, cache: tuple | None = None, cache_index=None):
    """Self-attention (kv None) or cross-attention; `mask` True = may attend, broadcastable to
    [B, T, U]. With `cache` = (k [B, U, H, K], v, ...), the new keys/values are written at
    `cache_index` and attention runs over the whole cache (the caller's mask hides unwritten
    slots); returns (y, new cache)."""
    q = self.split(self.q(x_BxTxD))
    if angle is not None:
      q = rotate(q, angle, interleaved=True)
    if isinstance(kv_BxUxD, tuple):  # keys and values computed once (cross-attention decoding)
      k, v = kv_BxUxD
    else:
      k, v = self.kv(x_BxTxD if kv_BxUxD is None else kv_BxUxD, angle)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
      cache = (k, v)
    y = attend(q, k, v, None if mask is None else mask[:, None], implementation=self.implementation)
    y = self.out(y.reshape(*y.shape[:-2], -1))
    return y if cache is None else (y, cache)


class AttentionalPooler(nnx.Module):
  """n learned queries attend over a token sequence (CoCa's task-specific pooling)."""

  def __init__(self, d: int, heads: int, n_query: int, *, dtype, rngs: nnx.Rngs,
               attention: str = "xla"):
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"))
    self.query = nnx.Param(init(rngs.params(), (n_query, d)))
    self.attn = MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs, attention=attention)

  def __call__(self, x_BxUxD: jax.Array, valid_BxU: jax.Array | None) -> jax.Array:
    B = x_BxUxD.shape[0]
    q = jnp.broadcast_to(self.query[...].astype(x_BxUxD.dtype), (B, *self.query.shape))
    mask = None if valid_BxU is None else valid_BxU[:, None, :]
    return self.attn(q, x_BxUxD, mask)


class ResidualBlock(nnx.Module):
  """Pre-LN block: x + attn(ln(x)) [self or cross], then x + mlp(ln(x)) (open_clip style)."""

  def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs, cross: bool = False,
               act=gelu, attention: str = "xla"):
    self.ln_1 = layer_norm(d, rngs=rngs)
    self.ln_kv = layer_norm(d, rngs=rngs) if cross else None
    self.attn = MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs, attention=attention)
    self.ln_2 = layer_norm(d, rngs=rngs)
    self.mlp = MLP(d, mlp, dtype=dtype, rngs=rngs, act=act)
    self.dtype = dtype

  def __call__(self, x, mask=None, kv=None, cache=None, cache_index=None):
    h = self.ln_1(x).astype(self.dtype)
    if kv is not None and not isinstance(kv, tuple):
      kv = self.ln_kv(kv).astype(self.dtype)
    out = self.attn(h, kv, mask, cache=cache, cache_index=cache_index)
    a, cache = out if cache is not None else (out, None)
    x = x + a
    x = x + self.mlp(self.ln_2(x).astype(self.dtype))
    return x if cache is None else (x, cache)

  def cross_kv(self, memory_BxUxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of the memory, for decoding steps that reuse them."""
    return self.attn.kv(self.ln_kv(memory_BxUxD).astype(self.dtype))
