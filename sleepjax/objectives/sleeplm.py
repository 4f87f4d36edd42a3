"""SleepLM (ReCoCa) losses: CLIP contrastive, caption cross-entropy, signal reconstruction MSE.

`L = lambda_con * L_con + lambda_cap * L_cap + lambda_rec * L_rec` (defaults 1 / 2 / 1). Rows are
epochs flattened over the global batch; under jit with a batch-sharded input XLA gathers the other
devices' rows, so contrastive negatives are global.
"""

import jax
import jax.numpy as jnp

_NEG = -1e9


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: a bijection of uint32 that scrambles every bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def same_caption(tokens_NxL: jax.Array) -> jax.Array:
  """[N, N]: rows whose token ids (or other int32 rows: `content_key`) are identical. Each row is
  hashed to two 32-bit words (token and position mixed, summed mod 2^32) so the pairwise test costs
  N^2, not N^2 L; distinct captions collide with probability ~2^-64."""
  L = tokens_NxL.shape[1]
  pos = jnp.arange(L, dtype=jnp.uint32)
  tok = tokens_NxL.astype(jnp.uint32)
  words = [_fmix32(tok * jnp.uint32(0x9E3779B1) + _fmix32(pos + jnp.uint32(seed))).sum(-1)
           for seed in (0x68E31DA4, 0xB5297A4D)]
  h_Nx2 = jnp.stack(words, -1)
  return (h_Nx2[:, None, :] == h_Nx2[None, :, :]).all(-1)


def content_key(features_NxF: jax.Array, group_N: jax.Array, stated_GxF: jax.Array,
                per_unit_F: jax.Array) -> jax.Array:
  """[N, 1 + F] int32 rows, equal exactly when two epochs' captions of their groups say the same
  thing: the group, then each feature the group states at the printed precision (NaN its own
  value, the others 0). Rows for `same_caption`; `data_prep.captions.content_grid` gives the
  grid."""
  q = jnp.round(features_NxF * per_unit_F)
  q = jnp.where(jnp.isnan(q), -(2**31) + 1, jnp.clip(q, -(2**30), 2**30)).astype(jnp.int32)
  q = jnp.where(stated_GxF[group_N], q, 0)
  return jnp.concatenate([group_N[:, None].astype(jnp.int32), q], 1)


def clip_loss(signal_NxP: jax.Array, text_NxP: jax.Array, valid_N: jax.Array,
              log_scale: jax.Array, same_NxN: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """Symmetric CLIP loss between row-paired embeddings (normalised here) at scale exp(log_scale).

  Invalid rows are neither anchors nor negatives; pairs with identical captions (`same_NxN`, e.g.
  two "Stage N2 sleep." epochs) are not negatives of each other, in either direction. Returns
  (loss, retrieval top-1) over valid rows: signal->text and text->signal accuracies averaged, read
  from the similarities before any masking of identical captions; retrieving a row whose caption
  is identical to the query's counts as a hit (they cannot be told apart)."""
  n_rows = len(valid_N)
  eye = jnp.eye(n_rows, dtype=bool)
  same = eye if same_NxN is None else same_NxN
  both_valid = valid_N[:, None] & valid_N[None, :]
  sim = l2_normalize(signal_NxP) @ l2_normalize(text_NxP).T
  logits = jnp.where(both_valid & (eye | ~same), jnp.exp(log_scale) * sim, _NEG)
  diag = jnp.diagonal(logits)
  per_row = 0.5 * (jax.nn.logsumexp(logits, 1) - diag + jax.nn.logsumexp(logits, 0) - diag)
  n = jnp.maximum(valid_N.sum(), 1)
  retrieval = jnp.where(both_valid, sim, _NEG)
  rows = jnp.arange(n_rows)
  hit = 0.5 * (same[rows, jnp.argmax(retrieval, 1)].astype(jnp.float32)
               + same[jnp.argmax(retrieval, 0), rows].astype(jnp.float32))
  return jnp.where(valid_N, per_row, 0.0).sum() / n, jnp.where(valid_N, hit, 0.0).sum() / n


def caption_loss(logits_NxLxV: jax.Array, tokens_NxL: jax.Array, valid_NxL: jax.Array,
                 row_N: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced cross-entropy: logits at position i predict token i + 1; padding (and rows
  with row_N False) ignored. Returns (mean loss per predicted token, token accuracy)."""
  logits = logits_NxLxV[:, :-1].astype(jnp.float32)
  target, weight = tokens_NxL[:, 1:], valid_NxL[:, 1:]
  if row_N is not None:
    weight = weight & row_N[:, None]
  logp = jax.nn.log_softmax(logits, -1)
  nll = -jnp.take_along_axis(logp, target[..., None], -1)[..., 0]
  n = jnp.maximum(weight.sum(), 1)
  acc = (jnp.argmax(logits, -1) == target) & weight
  return jnp.where(weight, nll, 0.0).sum() / n, acc.sum() / n


# f32 logits per chunk of the vocabulary projection: 256 MiB (1,280 tokens at a 49,408 vocabulary).
_CHUNK_LOGITS_BYTES = 2**28


def _scan_chunks(h_XxLxD, kernel_DxV, target_XxL, weight_XxL, grads: bool):
  """Sums over X chunks of L caption tokens, one chunk's logits alive at a time: (sum of weight *
  -log softmax(h @ kernel)[target], sum of weight * argmax hits), and with `grads` their
  gradients (d h float32, d kernel accumulated in float32). The loss is a sum, so its gradient is
  known in the forward pass: the backward only scales it, no chunk's logits are computed twice."""
  k_DxV = kernel_DxV.astype(h_XxLxD.dtype)  # cast once, not per chunk

  def body(carry, xs):
    h_LxD, target_L, weight_L = xs
    logits_LxV = jnp.dot(h_LxD, k_DxV, preferred_element_type=jnp.float32)
    lse_L = jax.nn.logsumexp(logits_LxV, -1)
    hit_L = jnp.argmax(logits_LxV, -1) == target_L
    # The target's logit from its kernel column (D x L), not another pass over the L x V logits.
    k_DxL = jnp.take(k_DxV, target_L, axis=1).astype(jnp.float32)
    picked_L = jnp.sum(h_LxD.astype(jnp.float32) * k_DxL.T, -1)
    nll_L = weight_L * (lse_L - picked_L)
    sums = (carry[0] + jnp.sum(nll_L), carry[1] + jnp.sum(weight_L * hit_L))
    if not grads:
      return sums, None
    # d nll / d logits = (softmax - onehot) * weight, in the compute dtype for both matmuls.
    p_LxV = jnp.exp(logits_LxV - lse_L[:, None])
    onehot_LxV = jax.nn.one_hot(target_L, p_LxV.shape[-1], dtype=p_LxV.dtype)
    d_LxV = ((p_LxV - onehot_LxV) * weight_L[:, None]).astype(h_LxD.dtype)
    dh_LxD = jnp.dot(d_LxV, k_DxV.T, preferred_element_type=jnp.float32)
    dkernel_DxV = carry[2] + jnp.dot(h_LxD.T, d_LxV, preferred_element_type=jnp.float32)
    return (*sums, dkernel_DxV), dh_LxD

  zero = jnp.zeros((), jnp.float32)
  if not grads:
    return jax.lax.scan(body, (zero, zero), (h_XxLxD, target_XxL, weight_XxL))[0]
  dk = jnp.zeros(kernel_DxV.shape, jnp.float32)
  (nll, hits, dk), dh_XxLxD = jax.lax.scan(body, (zero, zero, dk),
                                           (h_XxLxD, target_XxL, weight_XxL))
  return (nll, hits), (dh_XxLxD, dk)


@jax.custom_vjp
def _projected_nll(h_XxLxD, kernel_DxV, target_XxL, weight_XxL):
  return _scan_chunks(h_XxLxD, kernel_DxV, target_XxL, weight_XxL, grads=False)


def _projected_nll_fwd(h_XxLxD, kernel_DxV, target_XxL, weight_XxL):
  sums, (dh, dk) = _scan_chunks(h_XxLxD, kernel_DxV, target_XxL, weight_XxL, grads=True)
  # Zero-size arrays carry the inputs' dtypes (residuals are arrays).
  return sums, (dh, dk, jnp.zeros((0,), h_XxLxD.dtype), jnp.zeros((0,), kernel_DxV.dtype))


def _projected_nll_bwd(res, g):
  dh, dk, h_like, k_like = res
  return (g[0] * dh).astype(h_like.dtype), (g[0] * dk).astype(k_like.dtype), None, None


_projected_nll.defvjp(_projected_nll_fwd, _projected_nll_bwd)


def projected_caption_loss(h_NxLxD: jax.Array, kernel_DxV: jax.Array, tokens_NxL: jax.Array,
                           valid_NxL: jax.Array, row_N: jax.Array | None = None,
                           chunk_tokens: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`caption_loss(h @ kernel, ...)` without the [N, L, V] logits: the vocabulary projection and
  the cross-entropy run over chunks of `chunk_tokens` tokens (default: 256 MiB of float32 logits)
  in one scan that also forms the gradients (the backward scales them). bf16 inputs
  give a bf16 matmul with float32 logits (the plain path rounds its logits to bf16 first)."""
  N, L, D = h_NxLxD.shape
  V = kernel_DxV.shape[1]
  target, weight = tokens_NxL[:, 1:], valid_NxL[:, 1:]
  if row_N is not None:
    weight = weight & row_N[:, None]
  total = N * (L - 1)
  chunk = min(total, chunk_tokens or max(128, _CHUNK_LOGITS_BYTES // (4 * V) // 128 * 128))
  X = -(-total // chunk)
  pad = lambda x: jnp.pad(x.reshape(total, *x.shape[2:]),
                          [(0, X * chunk - total)] + [(0, 0)] * (x.ndim - 2))
  h = pad(h_NxLxD[:, :-1]).reshape(X, chunk, D)
  t = pad(target).reshape(X, chunk)
  w = pad(weight).reshape(X, chunk).astype(jnp.float32)
  nll, hits = _projected_nll(h, kernel_DxV, t, w)
  n = jnp.maximum(weight.sum(), 1)
  return nll / n, hits / n


def recon_loss(pred_NxCxS: jax.Array, target_NxCxS: jax.Array, present_NxC: jax.Array) -> jax.Array:
  """Mean squared error over the samples of present channels only."""
  se = ((pred_NxCxS.astype(jnp.float32) - target_NxCxS.astype(jnp.float32)) ** 2).mean(-1)
  return jnp.where(present_NxC, se, 0.0).sum() / jnp.maximum(present_NxC.sum(), 1)


def combine(terms: dict, lambdas: dict) -> jax.Array:
  """sum_k lambda_k * term_k over the terms present."""
  return sum(lambdas[k] * v for k, v in terms.items())
