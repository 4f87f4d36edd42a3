"""Transformer building blocks with logical axis names on every parameter.

Parameters are created float32 (the optimiser's master copy; `model.param_dtype=bfloat16` only
casts them for the step); matmuls run in the module's `dtype` (bfloat16 on accelerators); norm
statistics, softmax and RoPE in float32. `Transformer` loops over its `Block`s, each
rematerialised under `remat` when one is named (no scan over layers).
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sleepjax.sharding import constrain

# model.remat: what a block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: fastest, most memory
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    "save_attn_proj": jax.checkpoint_policies.save_only_these_names("attn_proj"),  # q, k, v, out
}
# model.attention: jax.nn.dot_product_attention's implementation; "auto" = cuDNN flash attention on
# GPUs in bf16/fp16, XLA elsewhere.
ATTENTION = ("auto", "xla", "cudnn")


def attention_implementation(name: str, dtype) -> str | None:
  if name not in ATTENTION:
    raise ValueError(f"model.attention must be one of {ATTENTION}, got {name!r}")
  if name == "auto":
    low_precision = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and low_precision else None
  return None if name == "xla" else name

# model.dtype / model.param_dtype names -> dtypes
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACT = ("activation_batch", "activation_time", "activation_embed")


def dense(d_in: int, d_out: int, axes: tuple[str, str], *, dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)))


def layer_norm(d: int, *, rngs: nnx.Rngs, axis: str = "embed", dtype=jnp.float32,
               eps: float = 1e-6) -> nnx.LayerNorm:
  """LayerNorm with float32 statistics whatever the input; `dtype` is its output's (float32, or
  the compute dtype for a bfloat16 residual stream)."""
  return nnx.LayerNorm(
      d, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)))


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout: zero each entry with probability `rate`, scale the rest by 1 / (1 - rate).
  Identity without an `rng` (evaluation) or at rate 0. The mask is a pure function of `rng`, so a
  second forward with the same key (GradCache's backward pass) drops the same entries."""
  if rng is None or rate == 0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def check_dropout(rate: float, key: str):
  if not 0 <= rate < 1:
    raise ValueError(f"{key} must be in [0, 1), got {rate}")


def rope(x_BxTxHxK: jax.Array, positions_T: jax.Array, bias_HxK: jax.Array | None = None,
         max_wavelength: float = 10_000.0) -> jax.Array:
  """Rotary position embedding over the time axis (computed in float32) of x + bias.

  RoPE is linear, so the bias is rotated on its own ([T, H, K], tiny) and added after: XLA then
  adds it inside RoPE's elementwise pass, where `x W + b` before RoPE becomes a cuBLAS call whose
  C operand is the bias broadcast to the full [B, T, H, K] (one more activation written and read).
  """
  k = x_BxTxHxK.shape[-1] // 2
  freq_K = max_wavelength ** (-jnp.arange(k, dtype=jnp.float32) / k)
  angle_TxK = positions_T[:, None].astype(jnp.float32) * freq_K[None]
  sin, cos = jnp.sin(angle_TxK)[None, :, None], jnp.cos(angle_TxK)[None, :, None]

  def rotate(v):
    v1, v2 = jnp.split(v.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([v1 * cos - v2 * sin, v2 * cos + v1 * sin], -1)

  y = rotate(x_BxTxHxK)
  if bias_HxK is not None:
    y = y + rotate(jnp.broadcast_to(bias_HxK, (1, positions_T.shape[0], *bias_HxK.shape)))
  return y.astype(x_BxTxHxK.dtype)


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """GELU, tanh approximation (= jax.nn.gelu), whose backward keeps only its input.

  Autodiff of jax.nn.gelu saves the tanh as a second activation-sized tensor: at sleep2vec dense
  that is one more [30720, 3072] write in the forward and read in the backward per block, memory
  traffic the H200 profile counted among the step's largest non-matmul costs (BENCHMARKS.md).
  Keeping x alone (the matmul output XLA already holds) and recomputing tanh in the backward
  drops both.
  """
  return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  x32 = x.astype(jnp.float32)
  t = jnp.tanh(_GELU_C * (x32 + 0.044715 * x32 ** 3))
  slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x32 * x32)
  return ((g.astype(jnp.float32) * slope).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, jnp.float32))


class Attention(nnx.Module):
  """Multi-head self-attention with RoPE. q/k/v kernels are [D, heads, head_dim] (logical axes
  embed, heads, kv), so tensor parallelism splits whole heads."""

  def __init__(self, d: int, heads: int, *, dtype, rngs: nnx.Rngs, attention: str = "xla",
               dropout: float = 0.0):
    if d % heads:
      raise ValueError(f"width {d} not divisible by {heads} heads")
    check_dropout(dropout, "model.attention_dropout")
    if attention == "cudnn" and dropout > 0:
      # Training would silently run XLA's attention instead (`_attend_with_dropout`).
      raise ValueError(f"model.attention='cudnn' (jax.nn.dot_product_attention) has no attention "
                       f"dropout; model.attention_dropout={dropout} needs model.attention='xla' "
                       "or 'auto' (cuDNN in evaluation, XLA with dropout in training)")
    self.heads, self.head_dim, self.dtype, self.dropout_rate = heads, d // heads, dtype, dropout
    self.implementation = attention_implementation(attention, dtype)
    hk = (heads, d // heads)
    kernel = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    zeros = nnx.initializers.zeros_init()
    for name in ("q", "k", "v"):
      setattr(self, name, _param(rngs, kernel, (d, *hk), ("embed", "heads", "kv")))
      # Biases stay vectors (no weight decay on vectors); heads-major, so they split whole too.
      setattr(self, f"{name}_bias", _param(rngs, zeros, (d,), ("heads",)))
    self.out = _param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), (*hk, d),
                      ("heads", "kv", "embed"))
    self.out_bias = _param(rngs, zeros, (d,), ("embed",))

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
    mask = None if mask_BxT is None else _key_mask(mask_BxT)
    out_bias_D = self.out_bias.value
    if rng is None or self.dropout_rate == 0:
      y_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask=mask,
                                               implementation=self.implementation)
      # v's bias passes through attention unchanged (every query's weights sum to one; the
      # diagonal keeps each row non-empty), so it is applied as out(b_v), folded into the output
      # bias: the same function, without a [B, T, H, K] bias broadcast feeding the v projection.
      out_bias_D = out_bias_D + jnp.einsum("hk,hkd->d", self._bias(self.v_bias), self.out.value)
    else:
      # Dropped weights no longer sum to one: v's bias joins v, as in the reference's attention.
      v_BxTxHxK = v_BxTxHxK + self._bias(self.v_bias).astype(self.dtype)
      y_BxTxHxK = self._attend_with_dropout(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask, rng)
    y_BxTxD = jnp.einsum("bthk,hkd->btd", y_BxTxHxK, self.out.value.astype(self.dtype))
    return _saved(y_BxTxD + out_bias_D.astype(self.dtype))

  def _attend_with_dropout(self, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask_Bx1xTxT, rng):
    """Softmax attention written out (jax.nn.dot_product_attention takes no dropout): float32
    logits and softmax, inverted dropout on the probabilities, values in the compute dtype."""
    logits_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK,
                                preferred_element_type=jnp.float32) * self.head_dim ** -0.5
    if mask_Bx1xTxT is not None:
      logits_BxHxTxT = jnp.where(mask_Bx1xTxT, logits_BxHxTxT, jnp.finfo(jnp.float32).min)
    probs_BxHxTxT = dropout(jax.nn.softmax(logits_BxHxTxT, axis=-1), self.dropout_rate, rng)
    return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxT.astype(self.dtype), v_BxTxHxK)


def _key_mask(present_BxT: jax.Array) -> jax.Array:
  """[B, 1, T, T]: query t attends to present keys, and always to itself. The full query axis is
  what cuDNN's fused attention accepts (it takes no broadcast bias); the diagonal keeps a window
  with no present epoch finite (its outputs are masked downstream) instead of a softmax over
  nothing, and changes nothing for a present query, whose own key is present."""
  T = present_BxT.shape[1]
  return (present_BxT[:, None, None, :] | jnp.eye(T, dtype=bool)[None, None])


def _saved(x):
  """Names an attention projection for the `save_attn_proj` remat policy."""
  return checkpoint_name(x, "attn_proj")


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

  def _mlp(self, x_BxTxD):
    h_BxTxF = constrain(gelu(self.up(x_BxTxD)),
                        ("activation_batch", "activation_time", "activation_mlp"))
    return self.down(h_BxTxF)

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    attn_rng, attn_out_rng, mlp_rng = [None] * 3 if rng is None else jax.random.split(rng, 3)

    def attn(x):
      return dropout(self.attn(x, mask_BxT, attn_rng), self.dropout_rate, attn_out_rng)

    def mlp(x):
      return dropout(self._mlp(x), self.dropout_rate, mlp_rng)

    if self.post:
      x_BxTxD = self.norm1(x_BxTxD + attn(x_BxTxD))
      return constrain(self.norm2(x_BxTxD + mlp(x_BxTxD)), ACT)
    x_BxTxD = x_BxTxD + attn(self.norm1(x_BxTxD))
    return constrain(x_BxTxD + mlp(self.norm2(x_BxTxD)), ACT)


def _call_block(block, x_BxTxD, mask_BxT, rng):
  return block(x_BxTxD, mask_BxT, rng)


class Transformer(nnx.Module):
  """`depth` blocks. Pre-LN stacks end with a final LayerNorm; post-LN stacks (BERT / RoFormer)
  start with one on their input (the reference's embedding LayerNorm) and their blocks already end
  in one, so both have the same parameters.

  `remat`: a name in REMAT_POLICIES (each block rematerialised under that policy, or not at all);
  `attention`: see `attention_implementation`; `residual_dtype`: the residual stream's and the
  LayerNorm outputs' dtype (statistics stay float32). float32 by default; the compute dtype halves
  the memory traffic of the norms and residual adds, which the H200 profile put at several ms of
  the sleep2vec dense step (BENCHMARKS.md). `norm_eps`: every LayerNorm's epsilon (RoFormer's is
  1e-12); `dropout` (on the input and each block's branches) and `attention_dropout` act only
  when the call gets an `rng` (training).
  """

  def __init__(self, d: int, depth: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs,
               norm: str = "pre", remat: str = "none", attention: str = "xla",
               residual_dtype=jnp.float32, norm_eps: float = 1e-6, dropout: float = 0.0,
               attention_dropout: float = 0.0):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    self.remat, self.residual_dtype, self.dropout_rate = remat, residual_dtype, dropout
    self.blocks = nnx.List([Block(d, heads, mlp, dtype=dtype, rngs=rngs, norm=norm,
                                  attention=attention, residual_dtype=residual_dtype,
                                  norm_eps=norm_eps, dropout=dropout,
                                  attention_dropout=attention_dropout)
                            for _ in range(depth)])
    make_norm = lambda: layer_norm(d, rngs=rngs, dtype=residual_dtype, eps=norm_eps)
    self.input_norm = make_norm() if norm == "post" else None
    self.norm = make_norm() if norm == "pre" else None

  def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    call = _call_block
    if self.remat != "none":
      call = nnx.remat(_call_block, policy=REMAT_POLICIES[self.remat])
    rngs = [None] * (len(self.blocks) + 1)
    if rng is not None:  # one key per block: a remat's recompute draws the same masks again
      rngs = list(jax.random.split(rng, len(self.blocks) + 1))
    x_BxTxD = x_BxTxD.astype(self.residual_dtype)
    if self.input_norm is not None:
      x_BxTxD = self.input_norm(x_BxTxD)
    x_BxTxD = dropout(x_BxTxD, self.dropout_rate, rngs[0])
    for block, block_rng in zip(self.blocks, rngs[1:]):
      x_BxTxD = call(block, x_BxTxD, mask_BxT, block_rng)
    return x_BxTxD if self.norm is None else self.norm(x_BxTxD)
