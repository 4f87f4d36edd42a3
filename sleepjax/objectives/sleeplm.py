"""SleepLM (ReCoCa) losses: CLIP contrastive, caption cross-entropy, signal reconstruction MSE.

`L = lambda_con * L_con + lambda_cap * L_cap + lambda_rec * L_rec` (defaults 1 / 2 / 1). Rows are
epochs flattened over the global batch; under jit with a batch-sharded input XLA gathers the other
devices' rows, so contrastive negatives are global.
"""

import jax
import jax.numpy as jnp

_NEG = -1e9
MAX_LOGIT_SCALE = 100.0


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def clip_loss(signal_NxP: jax.Array, text_NxP: jax.Array, valid_N: jax.Array,
              logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric CLIP loss between row-paired embeddings (normalised here); invalid rows are neither
  anchors nor negatives. `logit_scale` is the log of the temperature's inverse, clipped so the
  scale is at most 100. Returns (loss, signal->text top-1 accuracy) over valid rows."""
  scale = jnp.exp(jnp.minimum(logit_scale, jnp.log(MAX_LOGIT_SCALE)))
  logits = scale * l2_normalize(signal_NxP) @ l2_normalize(text_NxP).T
  logits = jnp.where(valid_N[:, None] & valid_N[None, :], logits, _NEG)
  diag = jnp.diagonal(logits)
  per_row = 0.5 * (jax.nn.logsumexp(logits, 1) - diag + jax.nn.logsumexp(logits, 0) - diag)
  n = jnp.maximum(valid_N.sum(), 1)
  hit = jnp.argmax(logits, 1) == jnp.arange(len(valid_N))
  return jnp.where(valid_N, per_row, 0.0).sum() / n, jnp.where(valid_N, hit, False).sum() / n


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


def recon_loss(pred_NxKxS: jax.Array, target_NxKxS: jax.Array, present_NxK: jax.Array) -> jax.Array:
  """Mean squared error over the samples of present channels only."""
  se = ((pred_NxKxS.astype(jnp.float32) - target_NxKxS.astype(jnp.float32)) ** 2).mean(-1)
  return jnp.where(present_NxK, se, 0.0).sum() / jnp.maximum(present_NxK.sum(), 1)


def combine(terms: dict, lambdas: dict) -> jax.Array:
  """sum_k lambda_k * term_k over the terms present."""
  return sum(lambdas[k] * v for k, v in terms.items())
