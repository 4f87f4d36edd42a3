"""SleepLM building blocks: RMSNorm, SwiGLU, multi-head attention (self / cross, RoPE, KV cache),
learnable-frequency RoPE, attentional pooler, pre-LN GELU residual blocks.

Parameters carry logical axis names (see `sleepjax.sharding.RULES`); norms, softmax and RoPE run
in float32, matmuls in the configured dtype.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import dense, gelu

_NEG = -1e9


class RMSNorm(nnx.Module):
  def __init__(self, d: int, eps: float = 1e-6):
    init = nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",))
    self.scale = nnx.Param(init(jax.random.key(0), (d,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def layer_norm(d: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm computed in float32 (output cast back by the caller's next matmul)."""
  return nnx.LayerNorm(
      d, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))


class SwiGLU(nnx.Module):
  """down(silu(w1 x) * w2 x), no biases (the released encoder's MLP)."""

  def __init__(self, d: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.w1 = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs, use_bias=False)
    self.w2 = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs, use_bias=False)
    self.down = dense(hidden, d, ("mlp", "embed"), dtype=dtype, rngs=rngs, use_bias=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.w1(x)) * self.w2(x))


class GeluMLP(nnx.Module):
  def __init__(self, d: int, hidden: int, *, dtype, rngs: nnx.Rngs, act=gelu):
    self.up = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.down = dense(hidden, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(self.act(self.up(x)))


def rotate(x_BxTxHxK: jax.Array, angle_TxK2: jax.Array) -> jax.Array:
  """RoPE on interleaved pairs (x[2i], x[2i+1]) by angle [T, K/2]."""
  x = x_BxTxHxK.astype(jnp.float32)
  cos, sin = jnp.cos(angle_TxK2)[:, None], jnp.sin(angle_TxK2)[:, None]
  x1, x2 = x[..., 0::2], x[..., 1::2]
  y = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
  return y.reshape(x.shape).astype(x_BxTxHxK.dtype)


def fixed_rope_angles(positions_T: jax.Array, head_dim: int, theta: float = 1e4) -> jax.Array:
  freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions_T.astype(jnp.float32)[:, None] * freq[None]


class LearnedRope(nnx.Module):
  """RoPE whose frequencies are parameters (channel attention: positions are channel indices)."""

  def __init__(self, head_dim: int, *, rngs: nnx.Rngs):
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("qkv",))
    self.freq = nnx.Param(init(rngs.params(), (head_dim // 2,)))

  def __call__(self, positions_T: jax.Array) -> jax.Array:
    return positions_T.astype(jnp.float32)[:, None] * self.freq[...][None]


def attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS) -> jax.Array:
  """Softmax attention in float32; `mask` True = may attend (broadcastable to [B, T, S])."""
  scale = q_BxTxHxK.shape[-1] ** -0.5
  logits = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                      preferred_element_type=jnp.float32) * scale
  if mask_BxTxS is not None:
    logits = jnp.where(mask_BxTxS[:, None], logits, _NEG)
  p = jax.nn.softmax(logits, -1).astype(v_BxSxHxK.dtype)
  return jnp.einsum("bhts,bshk->bthk", p, v_BxSxHxK)


class MultiHeadAttention(nnx.Module):
  """Separate q / k / v / out projections (self- or cross-attention).

  `qkv_bias`: the encoder's attention has no q/k/v bias (out has one); torch-style
  nn.MultiheadAttention (poolers, text, decoder) has biases everywhere.
  """

  def __init__(self, d: int, heads: int, *, dtype, rngs: nnx.Rngs, qkv_bias: bool = True,
               d_kv: int | None = None):
    if d % heads:
      raise ValueError(f"width {d} not divisible by {heads} heads")
    d_kv = d_kv or d
    self.heads, self.head_dim = heads, d // heads
    self.q = dense(d, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.k = dense(d_kv, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.v = dense(d_kv, d, ("embed", "heads"), dtype=dtype, rngs=rngs, use_bias=qkv_bias)
    self.out = dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)

  def split(self, x):
    return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

  def kv(self, x_BxSxD: jax.Array, angle=None) -> tuple[jax.Array, jax.Array]:
    k, v = self.split(self.k(x_BxSxD)), self.split(self.v(x_BxSxD))
    return (k if angle is None else rotate(k, angle)), v

  def __call__(self, x_BxTxD: jax.Array, kv_BxSxD: jax.Array | None = None, mask=None,
               angle=None, cache: tuple | None = None, cache_index=None):
    """Self-attention (kv None) or cross-attention. With `cache` = (k [B, S, H, K], v, ...),
    the new keys/values are written at `cache_index` and attention runs over the whole cache
    (the caller's mask hides unwritten slots); returns (y, new cache)."""
    q = self.split(self.q(x_BxTxD))
    if angle is not None:
      q = rotate(q, angle)
    if isinstance(kv_BxSxD, tuple):  # keys and values computed once (cross-attention decoding)
      k, v = kv_BxSxD
    else:
      k, v = self.kv(x_BxTxD if kv_BxSxD is None else kv_BxSxD, angle)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
      cache = (k, v)
    y = attend(q, k, v, mask)
    y = self.out(y.reshape(*y.shape[:-2], -1))
    return y if cache is None else (y, cache)


class AttentionalPooler(nnx.Module):
  """n learned queries attend over a token sequence (CoCa's task-specific pooling)."""

  def __init__(self, d: int, heads: int, n_query: int, *, dtype, rngs: nnx.Rngs):
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"))
    self.query = nnx.Param(init(rngs.params(), (n_query, d)))
    self.attn = MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxSxD: jax.Array, valid_BxS: jax.Array | None) -> jax.Array:
    B = x_BxSxD.shape[0]
    q = jnp.broadcast_to(self.query[...].astype(x_BxSxD.dtype), (B, *self.query.shape))
    mask = None if valid_BxS is None else valid_BxS[:, None, :]
    return self.attn(q, x_BxSxD, mask)


class ResidualBlock(nnx.Module):
  """Pre-LN block: x + attn(ln(x)) [self or cross], then x + mlp(ln(x)) (open_clip style)."""

  def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs, cross: bool = False,
               act=gelu):
    self.ln_1 = layer_norm(d, rngs=rngs)
    self.ln_kv = layer_norm(d, rngs=rngs) if cross else None
    self.attn = MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs)
    self.ln_2 = layer_norm(d, rngs=rngs)
    self.mlp = GeluMLP(d, mlp, dtype=dtype, rngs=rngs, act=act)
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

  def cross_kv(self, memory_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of the memory, for decoding steps that reuse them."""
    return self.attn.kv(self.ln_kv(memory_BxSxD).astype(self.dtype))
