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
  """[N, N]: rows whose token ids are identical. Each row is hashed to two 32-bit words (token and
  position mixed, summed mod 2^32) so the pairwise test costs N^2, not N^2 L; distinct captions
  collide with probability ~2^-64."""
  L = tokens_NxL.shape[1]
  pos = jnp.arange(L, dtype=jnp.uint32)
  tok = tokens_NxL.astype(jnp.uint32)
  words = [_fmix32(tok * jnp.uint32(0x9E3779B1) + _fmix32(pos + jnp.uint32(seed))).sum(-1)
           for seed in (0x68E31DA4, 0xB5297A4D)]
  h_Nx2 = jnp.stack(words, -1)
  return (h_Nx2[:, None, :] == h_Nx2[None, :, :]).all(-1)


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


def recon_loss(pred_NxCxS: jax.Array, target_NxCxS: jax.Array, present_NxC: jax.Array) -> jax.Array:
  """Mean squared error over the samples of present channels only."""
  se = ((pred_NxCxS.astype(jnp.float32) - target_NxCxS.astype(jnp.float32)) ** 2).mean(-1)
  return jnp.where(present_NxC, se, 0.0).sum() / jnp.maximum(present_NxC.sum(), 1)


def combine(terms: dict, lambdas: dict) -> jax.Array:
  """sum_k lambda_k * term_k over the terms present."""
  return sum(lambdas[k] * v for k, v in terms.items())
