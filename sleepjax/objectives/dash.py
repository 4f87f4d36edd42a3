"""DAS-H InfoNCE (sleep2vec): Demography-, Age-, Site- and History-aware contrastive loss.

For a batch of B recordings' windows with metadata (age, sex, site, recording id):

  k_ij = clip(exp(-|age_i - age_j| / sigma_age) * (1 if sex_i == sex_j else alpha_sex), 0, 1)
         (0 where either age or sex is missing: age NaN, sex -1)
  g_ij = gamma_same if site_i == site_j else gamma_diff
  w_ij = k_ij * g_ij + eps;  w_ii = 1
  same-night (same recording id) off-diagonal pairs: w_ij = eps and h_ij = 1 (hard), else h_ij = 0
  each row is divided by the mean of its valid negatives' weights (off-diagonal, not same-night);
  a row without any valid negative uses the mean of all its off-diagonal weights instead (and is
  left as is when B = 1); the diagonal stays 1 (log w of the positive is 0).

  logits_ij = cos(za_i, zb_j) / T + log w_ij - (hard_scale / T) * h_ij

At each epoch position the loss is the symmetric cross-entropy 1/2 (CE(a->b) + CE(b->a)) with the
same row-normalised w and h in both directions, averaged over valid rows and positions. Plain
InfoNCE is w = 1, h = 0 (`plain_weights`). Inputs are L2-normalised here. Under jit with
batch-sharded inputs the B x B matrices span the global batch (negatives from every device/host).

Both public functions accept NumPy or JAX arrays.
"""

import jax
import jax.numpy as jnp

_NEG = -1e9


def dash_weights(age_B, sex_B, site_B, recording_B, *, sigma_age: float = 20.0,
                 alpha_sex: float = 0.8, gamma_same: float = 1.3, gamma_diff: float = 0.8,
                 eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """(w [B, B] row-normalised negative weights with w_ii = 1, h [B, B] same-night hard marks)."""
  age_B = jnp.asarray(age_B, jnp.float32)
  sex_B, site_B, rec_B = (jnp.asarray(x).astype(jnp.int32) for x in (sex_B, site_B, recording_B))
  known_B = ~jnp.isnan(age_B) & (sex_B >= 0)
  age_B = jnp.where(jnp.isnan(age_B), 0.0, age_B)
  k = jnp.exp(-jnp.abs(age_B[:, None] - age_B[None, :]) / sigma_age)
  k = k * jnp.where(sex_B[:, None] == sex_B[None, :], 1.0, alpha_sex)
  k = jnp.where(known_B[:, None] & known_B[None, :], jnp.clip(k, 0.0, 1.0), 0.0)
  g = jnp.where(site_B[:, None] == site_B[None, :], gamma_same, gamma_diff)
  w = k * g + eps
  B = age_B.shape[0]
  eye = jnp.eye(B, dtype=bool)
  hard = (rec_B[:, None] == rec_B[None, :]) & ~eye
  w = jnp.where(hard, eps, w)
  valid = ~eye & ~hard
  n_valid = valid.sum(1)
  mean_valid = jnp.where(valid, w, 0.0).sum(1) / jnp.maximum(n_valid, 1)
  mean_off = jnp.where(eye, 0.0, w).sum(1) / max(B - 1, 1)
  norm = jnp.where(n_valid > 0, mean_valid, mean_off if B > 1 else 1.0)
  w = jnp.where(eye, 1.0, w / norm[:, None])
  return w, hard.astype(jnp.float32)


def plain_weights(B: int) -> tuple[jax.Array, jax.Array]:
  """Plain InfoNCE as DAS-H's special case: w = 1, h = 0."""
  return jnp.ones((B, B), jnp.float32), jnp.zeros((B, B), jnp.float32)


def _unit(z):
  z = jnp.asarray(z, jnp.float32)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def dash_info_nce_with_accuracy(za_BxWxP, zb_BxWxP, w_BxB, h_BxB, temperature: float,
                                hard_scale: float, valid_BxW=None) -> tuple[jax.Array, jax.Array]:
  """(loss, top-1 retrieval accuracy from the cosines, mean of a->b and b->a); see
  `dash_info_nce`."""
  za, zb = _unit(za_BxWxP), _unit(zb_BxWxP)
  B, W, _ = za.shape
  w = jnp.asarray(w_BxB, jnp.float32)
  valid_WxB = (jnp.ones((W, B), bool) if valid_BxW is None else jnp.asarray(valid_BxW, bool).T)
  # A zero weight removes the column (an excluded negative), exactly.
  log_w = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), _NEG)
  bias_BxB = log_w - (hard_scale / temperature) * jnp.asarray(h_BxB, jnp.float32)
  cos_WxBxB = jnp.einsum("iwp,jwp->wij", za, zb)
  cols_WxBxB = valid_WxB[:, None, :] & jnp.ones((1, B, 1), bool)
  logits_ab = jnp.where(cols_WxBxB, cos_WxBxB / temperature + bias_BxB, _NEG)
  logits_ba = jnp.where(cols_WxBxB, jnp.swapaxes(cos_WxBxB, 1, 2) / temperature + bias_BxB, _NEG)
  diag_ab = jnp.diagonal(logits_ab, axis1=1, axis2=2)
  diag_ba = jnp.diagonal(logits_ba, axis1=1, axis2=2)
  ce_WxB = 0.5 * ((jax.nn.logsumexp(logits_ab, -1) - diag_ab)
                  + (jax.nn.logsumexp(logits_ba, -1) - diag_ba))
  n = jnp.maximum(valid_WxB.sum(), 1)
  loss = jnp.where(valid_WxB, ce_WxB, 0.0).sum() / n
  # Retrieval is read off the plain similarities, both directions (as the reference logs it):
  # the DAS-H weights and hard marks shape the loss, not which candidate is nearest.
  sim_WxBxB = jnp.where(cols_WxBxB, cos_WxBxB, _NEG)
  sim_t_WxBxB = jnp.where(cols_WxBxB, jnp.swapaxes(cos_WxBxB, 1, 2), _NEG)
  rows_B = jnp.arange(B)[None]
  hit_WxB = 0.5 * ((jnp.argmax(sim_WxBxB, -1) == rows_B).astype(jnp.float32)
                   + (jnp.argmax(sim_t_WxBxB, -1) == rows_B).astype(jnp.float32))
  return loss, jnp.where(valid_WxB, hit_WxB, 0.0).sum() / n


def dash_info_nce(za_BxWxP, zb_BxWxP, w_BxB, h_BxB, temperature: float, hard_scale: float,
                  valid_BxW=None) -> jax.Array:
  """DAS-H InfoNCE with per-time-step negatives: at each of the W epoch positions, a B x B
  similarity between modality a's and b's projections (rows i of za and zb are positives).

  `valid_BxW` (optional, bool): tokens present in both modalities; invalid tokens are neither
  rows nor negatives. A weight of exactly 0 excludes that negative.
  """
  return dash_info_nce_with_accuracy(za_BxWxP, zb_BxWxP, w_BxB, h_BxB, temperature, hard_scale,
                                     valid_BxW)[0]
