"""sleep2vec's transformer: self-attention with RoPE (q/k/v kernels [D, heads, head_dim]), pre- or
post-LN blocks, the stack of blocks looped or under `nnx.scan`, each block rematerialised under
`remat` when one is named.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sleepjax.models.layers import (ACT, attend, attention_implementation, check_dropout,
                                    check_remat, dense, dropout, key_mask, layer_norm, mlp, param,
                                    rematted, rope, run_stack, stack)
from sleepjax.sharding import constrain


def _saved(x):
  """Names an attention projection for the `save_attn_proj` remat policy."""
  return checkpoint_name(x, "attn_proj")


class Attention(nnx.Module):
  """Multi-head self-attention with RoPE. q/k/v kernels are [D, heads, head_dim] (logical axes
  embed, heads, kv), so tensor parallelism splits whole heads."""

  def __init__(self, d: int, heads: int, *, dtype, rngs: nnx.Rngs, attention: str = "xla",
               dropout: float = 0.0):
    if d % heads:
      raise ValueError(f"width {d} not divisible by {heads} heads")
    check_dropout(dropout, "model.attention_dropout")
    if attention == "cudnn" and dropout > 0:
      # Training would silently run XLA's attention instead (`attend`).
      raise ValueError(f"model.attention='cudnn' (jax.nn.dot_product_attention) has no attention "
                       f"dropout; model.attention_dropout={dropout} needs model.attention='xla' "
                       "or 'auto' (cuDNN in evaluation, XLA with dropout in training)")
    self.heads, self.head_dim, self.dtype, self.dropout_rate = heads, d // heads, dtype, dropout
    self.implementation = attention_implementation(attention, dtype)
    hk = (heads, d // heads)
    kernel = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    zeros = nnx.initializers.zeros_init()
    for name in ("q", "k", "v"):
      setattr(self, name, param(rngs, kernel, (d, *hk), ("embed", "heads", "kv")))
      # Biases stay vectors (no weight decay on vectors); heads-major, so they split whole too.
      setattr(self, f"{name}_bias", param(rngs, zeros, (d,), ("heads",)))
    self.out = param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), (*hk, d),
                     ("heads", "kv", "embed"))
    self.out_bias = param(rngs, zeros, (d,), ("embed",))

  def _project(self, x_BxTxD, kernel):
    return jnp.einsum("btd,dhk->bthk", x_BxTxD.astype(self.dtype), kernel.value.astype(self.dtype))

  def _bias(self, bias):
    return bias.value.reshape(self.heads, self.head_dim)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None,
               rng: jax.Array | None = None) -> jax.Array:
    """`rng` (training only) drops attention probabilities at rate `dropout`."""
    positions_T = jnp.arange(x_BxTxD.shape[1])
    q_BxTxHxK = _saved(rope(self._project(x_BxTxD, self.q), positions_T, self._bias(self.q_bias)))
    k_BxTxHxK = _saved(rope(self._project(x_BxTxD, self.k), positions_T, self._bias(self.k_bias)))
    v_BxTxHxK = _saved(self._project(x_BxTxD, self.v))
    mask = None if mask_BxT is None else key_mask(mask_BxT)
    out_bias_D = self.out_bias.value
    if rng is None or self.dropout_rate == 0:
      # v's bias passes through attention unchanged (every query's weights sum to one; the
      # diagonal keeps each row non-empty), so it is applied as out(b_v), folded into the output
      # bias: the same function, without a [B, T, H, K] bias broadcast feeding the v projection.
      out_bias_D = out_bias_D + jnp.einsum("hk,hkd->d", self._bias(self.v_bias), self.out.value)
    else:
      # Dropped weights no longer sum to one: v's bias joins v, as in the reference's attention.
      v_BxTxHxK = v_BxTxHxK + self._bias(self.v_bias).astype(self.dtype)
    y_BxTxHxK = attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask, implementation=self.implementation,
                       dropout_rate=self.dropout_rate, rng=rng)
    y_BxTxD = jnp.einsum("bthk,hkd->btd", y_BxTxHxK, self.out.value.astype(self.dtype))
    return _saved(y_BxTxD + out_bias_D.astype(self.dtype))


class Block(nnx.Module):
  """Transformer block: attention + GELU MLP, pre-LN (`norm="pre"`) or post-LN (`"post"`, BERT /
  RoFormer: `LN(x + drop(attn(x)))`, then `LN(x + drop(mlp(x)))`). `dropout` acts on each
  branch's output, `attention_dropout` on the attention probabilities, both only with an `rng`."""

  def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs, norm: str = "pre",
               attention: str = "xla", residual_dtype=jnp.float32, norm_eps: float = 1e-6,
               dropout: float = 0.0, attention_dropout: float = 0.0):
    if norm not in ("pre", "post"):
      raise ValueError(f"model.norm must be 'pre' or 'post', got {norm!r}")
    check_dropout(dropout, "model.dropout")
    self.post, self.dropout_rate = norm == "post", dropout
    self.norm1 = layer_norm(d, rngs=rngs, dtype=residual_dtype, eps=norm_eps)
    self.attn = Attention(d, heads, dtype=dtype, rngs=rngs, attention=attention,
                          dropout=attention_dropout)
    self.norm2 = layer_norm(d, rngs=rngs, dtype=residual_dtype, eps=norm_eps)
    self.up = dense(d, mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.down = dense(mlp, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    attn_rng, attn_out_rng, mlp_rng = [None] * 3 if rng is None else jax.random.split(rng, 3)

    def attn_branch(x):
      return dropout(self.attn(x, mask_BxT, attn_rng), self.dropout_rate, attn_out_rng)

    def mlp_branch(x):
      return dropout(mlp(self.up, self.down, x), self.dropout_rate, mlp_rng)

    if self.post:
      x_BxTxD = self.norm1(x_BxTxD + attn_branch(x_BxTxD))
      return constrain(self.norm2(x_BxTxD + mlp_branch(x_BxTxD)), ACT)
    x_BxTxD = x_BxTxD + attn_branch(self.norm1(x_BxTxD))
    return constrain(x_BxTxD + mlp_branch(self.norm2(x_BxTxD)), ACT)


def _call_block(block, x_BxTxD, mask_BxT, rng):
  return block(x_BxTxD, mask_BxT, rng)


class Transformer(nnx.Module):
  """`depth` blocks. Pre-LN stacks end with a final LayerNorm; post-LN stacks (BERT / RoFormer)
  start with one on their input (the reference's embedding LayerNorm) and their blocks already end
  in one, so both have the same parameters.

  `remat`: a name in `layers.REMAT_POLICIES` (each block rematerialised under that policy, or not
  at all); `scan`: the blocks' parameters stacked on a leading `layers` axis and the blocks run
  under `nnx.scan`, so compile time does not grow with depth (a parameter tree other than the
  loop's `blocks/0`, `blocks/1`, ...; `layers.stack`); `attention`: see
  `attention_implementation`; `residual_dtype`: the residual stream's and the LayerNorm outputs'
  dtype (statistics stay float32). float32 by default; the compute dtype halves the memory traffic
  of the norms and residual adds, which the H200 profile put at several ms of the sleep2vec dense
  step (BENCHMARKS.md). `norm_eps`: every LayerNorm's epsilon (RoFormer's is 1e-12); `dropout` (on
  the input and each block's branches) and `attention_dropout` act only when the call gets an
  `rng` (training).
  """

  def __init__(self, d: int, depth: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs,
               norm: str = "pre", remat: str = "none", attention: str = "xla",
               residual_dtype=jnp.float32, norm_eps: float = 1e-6, dropout: float = 0.0,
               attention_dropout: float = 0.0, scan: bool = False):
    check_remat(remat)
    self.remat, self.residual_dtype, self.dropout_rate = remat, residual_dtype, dropout
    self.depth, self.scan = depth, scan

    def make_block(rngs):
      return Block(d, heads, mlp, dtype=dtype, rngs=rngs, norm=norm, attention=attention,
                   residual_dtype=residual_dtype, norm_eps=norm_eps, dropout=dropout,
                   attention_dropout=attention_dropout)

    self.blocks = stack(make_block, depth, rngs, scan)
    make_norm = lambda: layer_norm(d, rngs=rngs, dtype=residual_dtype, eps=norm_eps)
    self.input_norm = make_norm() if norm == "post" else None
    self.norm = make_norm() if norm == "pre" else None

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    call = rematted(_call_block, self.remat)
    rngs = [None] * (self.depth + 1)
    if rng is not None:  # one key per block: a remat's recompute draws the same masks again
      rngs = list(jax.random.split(rng, self.depth + 1))
    x_BxTxD = x_BxTxD.astype(self.residual_dtype)
    if self.input_norm is not None:
      x_BxTxD = self.input_norm(x_BxTxD)
    x_BxTxD = dropout(x_BxTxD, self.dropout_rate, rngs[0])
    block_rngs = None if rng is None else jnp.stack(rngs[1:]) if self.scan else rngs[1:]

    def body(x_BxTxD, block, block_rng):
      return call(block, x_BxTxD, mask_BxT, block_rng), None

    x_BxTxD, _ = run_stack(body, x_BxTxD, (self.blocks,), (block_rngs,), scan=self.scan)
    return x_BxTxD if self.norm is None else self.norm(x_BxTxD)

