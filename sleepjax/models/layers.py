"""Building blocks both families share, with logical axis names on every parameter: dense and
norm layers, dropout, GELU, MLPs, rotary embeddings, the attention core and stacks of blocks
(looped, or under `nnx.scan` with each block rematerialised inside).

Parameters are created float32 (the optimiser's master copy; `model.param_dtype=bfloat16` only
casts them for the step); matmuls run in the module's `dtype` (bfloat16 on accelerators); norm
statistics, softmax and RoPE in float32. sleep2vec's transformer is `models/transformer.py`,
SleepLM's attention modules `models/sleeplm/layers.py`; both attend through `attend` and stack
their blocks with `stack` / `run_stack`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.sharding import constrain

# model.dtype / model.param_dtype names -> dtypes
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACT = ("activation_batch", "activation_time", "activation_embed")
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


def dense(d_in: int, d_out: int, axes: tuple[str, str], *, dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)))


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, jnp.float32))


# ----------------------------------------------------------------------------------------- norms
def layer_norm(d: int, *, rngs: nnx.Rngs, axis: str = "embed", dtype=jnp.float32,
               eps: float = 1e-6) -> nnx.LayerNorm:
  """LayerNorm with float32 statistics whatever the input; `dtype` is its output's (float32, or
  the compute dtype for a bfloat16 residual stream)."""
  return nnx.LayerNorm(
      d, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis,)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,)))


class RMSNorm(nnx.Module):
  """RMSNorm in float32, output in the input's dtype. Its scale starts at one, so it draws no key."""

  def __init__(self, d: int, eps: float = 1e-6):
    init = nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",))
    self.scale = nnx.Param(init(jax.random.key(0), (d,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


# --------------------------------------------------------------------------------------- dropout
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


# ------------------------------------------------------------------------------------------ MLPs
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


def mlp(up: nnx.Linear, down: nnx.Linear, x_BxTxD: jax.Array, act=gelu) -> jax.Array:
  """down(act(up(x))), the hidden activation sharded over its feature axis (`activation_mlp`)."""
  h_BxTxF = constrain(act(up(x_BxTxD)), ("activation_batch", "activation_time", "activation_mlp"))
  return down(h_BxTxF)


class MLP(nnx.Module):
  """up -> act -> down, with biases."""

  def __init__(self, d: int, hidden: int, *, dtype, rngs: nnx.Rngs, act=gelu):
    self.up = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.down = dense(hidden, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    return mlp(self.up, self.down, x, self.act)


class SwiGLU(nnx.Module):
  """down(silu(w1 x) * w2 x), no biases."""

  def __init__(self, d: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.w1 = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs, use_bias=False)
    self.w2 = dense(d, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs, use_bias=False)
    self.down = dense(hidden, d, ("mlp", "embed"), dtype=dtype, rngs=rngs, use_bias=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.w1(x)) * self.w2(x))


# ------------------------------------------------------------------------------------------ RoPE
def rope_angles(positions_T: jax.Array, head_dim: int, theta: float = 10_000.0) -> jax.Array:
  """[T, head_dim / 2] rotation angles: position t, pair i turns by t * theta^(-2i / head_dim)."""
  k = head_dim // 2
  freq_K = theta ** (-jnp.arange(k, dtype=jnp.float32) / k)
  return positions_T.astype(jnp.float32)[:, None] * freq_K[None]


def rotate(x_BxTxHxK: jax.Array, angle_TxK2: jax.Array, interleaved: bool = False) -> jax.Array:
  """RoPE (in float32, output in x's dtype) by `angle` [T, K/2] on pairs of x's last axis: the two
  halves (x[i], x[i + K/2]) (RoFormer as in GPT-NeoX, sleep2vec) or, `interleaved`, neighbours
  (x[2i], x[2i + 1]) (SleepLM)."""
  shape, K2 = x_BxTxHxK.shape, x_BxTxHxK.shape[-1] // 2
  x = x_BxTxHxK.astype(jnp.float32)
  cos, sin = jnp.cos(angle_TxK2)[:, None], jnp.sin(angle_TxK2)[:, None]
  if interleaved:  # the halves' form below, on a trailing axis of 2, is 1.7x the bytes on a GPU
    x1, x2 = x[..., 0::2], x[..., 1::2]
    y = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(x.shape)
  else:
    # The halves on an axis of two, the partner that axis reversed: one elementwise pass forward
    # and backward, where split + concatenate cost XLA copies of their own (issue 25). Same
    # products and sums as (x1 cos - x2 sin, x2 cos + x1 sin): the output is bit-identical.
    x = x.reshape(*shape[:-1], 2, K2)
    sign = jnp.array([-1.0, 1.0], jnp.float32)[:, None]
    y = (x * cos[..., None, :] + x[..., ::-1, :] * sign * sin[..., None, :]).reshape(shape)
  return y.astype(x_BxTxHxK.dtype)


def rope(x_BxTxHxK: jax.Array, positions_T: jax.Array, bias_HxK: jax.Array | None = None,
         max_wavelength: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (halves) over the time axis of x + bias.

  RoPE is linear, so the bias is rotated on its own ([T, H, K], tiny) and added after: XLA then
  adds it inside RoPE's elementwise pass, where `x W + b` before RoPE becomes a cuBLAS call whose
  C operand is the bias broadcast to the full [B, T, H, K] (one more activation written and read).
  """
  angle_TxK2 = rope_angles(positions_T, x_BxTxHxK.shape[-1], max_wavelength)
  y = rotate(x_BxTxHxK.astype(jnp.float32), angle_TxK2)
  if bias_HxK is not None:
    y = y + rotate(jnp.broadcast_to(bias_HxK, (1, positions_T.shape[0], *bias_HxK.shape)),
                   angle_TxK2)
  return y.astype(x_BxTxHxK.dtype)


# ------------------------------------------------------------------------------------- attention
def softmax_attention(q_BxTxHxK, k_BxUxHxK, v_BxUxHxK, mask_BxHxTxU=None, *,
                      dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
  """Softmax attention written out: float32 logits and softmax, inverted dropout on the
  probabilities (with `rng`), values in v's dtype. `mask` True = may attend, broadcastable to
  [B, H, T, S]; a row with no key allowed averages all values (its output is unused)."""
  logits_BxHxTxU = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxUxHxK,
                              preferred_element_type=jnp.float32) * q_BxTxHxK.shape[-1] ** -0.5
  if mask_BxHxTxU is not None:
    logits_BxHxTxU = jnp.where(mask_BxHxTxU, logits_BxHxTxU, jnp.finfo(jnp.float32).min)
  probs_BxHxTxU = dropout(jax.nn.softmax(logits_BxHxTxU, axis=-1), dropout_rate, rng)
  return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxU.astype(v_BxUxHxK.dtype), v_BxUxHxK)


def attend(q_BxTxHxK, k_BxUxHxK, v_BxUxHxK, mask_BxHxTxU=None, *, implementation: str | None,
           dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
  """jax.nn.dot_product_attention under `implementation` (`attention_implementation`'s answer),
  or `softmax_attention` when dropout acts (the fused kernels take none)."""
  if rng is None or dropout_rate == 0:
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxUxHxK, v_BxUxHxK, mask=mask_BxHxTxU,
                                        implementation=implementation)
  return softmax_attention(q_BxTxHxK, k_BxUxHxK, v_BxUxHxK, mask_BxHxTxU,
                           dropout_rate=dropout_rate, rng=rng)


def key_mask(present_BxT: jax.Array) -> jax.Array:
  """[B, 1, T, T]: query t attends to present keys, and always to itself. The full query axis is
  what cuDNN's fused attention accepts (it takes no broadcast bias); the diagonal keeps a window
  with no present epoch finite (its outputs are masked downstream) instead of a softmax over
  nothing, and changes nothing for a present query, whose own key is present."""
  T = present_BxT.shape[1]
  return (present_BxT[:, None, None, :] | jnp.eye(T, dtype=bool)[None, None])


# -------------------------------------------------------------------------------- stacks of blocks
# model.remat: what a block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: fastest, most memory
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    "save_attn_proj": jax.checkpoint_policies.save_only_these_names("attn_proj"),  # q, k, v, out
}
# The leading axis of scanned blocks' parameters (sharding.RULES maps it to no mesh axis).
LAYERS = {nnx.PARTITION_NAME: "layers"}


def check_remat(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {name!r}")


def rematted(fn, remat: str):
  """`fn` (a block's call, the block its first argument) rematerialised under `remat`'s policy."""
  check_remat(remat)
  return fn if remat == "none" else nnx.remat(fn, policy=REMAT_POLICIES[remat])


def stack(make_block, depth: int, rngs: nnx.Rngs, scan: bool):
  """`depth` blocks `make_block(rngs)`: a list (parameters `0/...`, `1/...`), or with `scan`
  (`model.scan_blocks`) one block whose parameters are stacked on a leading `layers` axis, which
  `run_stack` runs under `nnx.scan` so that compile time does not grow with depth."""
  if scan:
    return nnx.split_rngs(splits=depth)(
        nnx.vmap(make_block, in_axes=0, out_axes=0, transform_metadata=LAYERS))(rngs)
  return nnx.List([make_block(rngs) for _ in range(depth)])


def run_stack(body, carry, stacks: tuple, xs: tuple = (), *, scan: bool):
  """Threads `carry` through the layers of `stacks` (`stack`s of one depth, run side by side):
  `body(carry, *the layer's blocks, *the layer's xs) -> (carry, y)`. `xs`: per-layer inputs, each
  a list over layers (looped) or leaves with a leading layers axis (scanned), or None (none).
  -> (carry, ys), the ys as the xs are."""
  if scan:
    return nnx.scan(body, in_axes=(nnx.Carry,) + (0,) * (len(stacks) + len(xs)),
                    out_axes=(nnx.Carry, 0), transform_metadata=LAYERS)(carry, *stacks, *xs)
  ys = []
  for i in range(len(stacks[0])):
    carry, y = body(carry, *(s[i] for s in stacks), *(None if x is None else x[i] for x in xs))
    ys.append(y)
  return carry, ys
