"""Cross-modal contrastive objectives over per-token projections: pair strategies x negatives.

Pair strategies (`objective.pair_strategy`):
  pair_first     the two modalities the model encoded (sleep2vec: one pair per global batch)
  all_pairs      mean over every modality pair with at least one token present in both
  leave_one_out  each modality against the mean of the other present ones (SleepFM)
Negatives (`objective.negatives`):
  per_step       at each epoch position, the B x B windows of the global batch (sleep2vec)
  all_tokens     all N = B*W tokens of the batch; tokens of the same recording (other epochs of
                 the same window included) are never plain negatives: DAS-H marks them hard with
                 weight eps, plain InfoNCE excludes them
  within_window  only the other epochs of the same window (W x W per window, one night): what
                 tells a night from another (subject, site, device) cannot solve it, only what
                 changes within the night can (plain weights; needs loss=info_nce)
  every_token    all N = B*W tokens, the same night's other epochs plain negatives too (across
                 and within nights; needs loss=info_nce)
Loss (`objective.loss`): `dash` (metadata weights, `sleepjax.objectives.dash`) or `info_nce`
(w = 1, h = 0).
"""

import itertools

import jax
import jax.numpy as jnp

from sleepjax.objectives.dash import dash_info_nce_with_accuracy, dash_weights, plain_weights

STRATEGIES = ("pair_first", "all_pairs", "leave_one_out")
NEGATIVES = ("per_step", "all_tokens", "within_window", "every_token")
PLAIN_ONLY = ("within_window", "every_token")  # negatives without metadata weights
LOSSES = ("dash", "info_nce")


def check(objective):
  for key, allowed in (("pair_strategy", STRATEGIES), ("negatives", NEGATIVES), ("loss", LOSSES)):
    if getattr(objective, key) not in allowed:
      raise ValueError(f"objective.{key}={getattr(objective, key)!r}; choose from {allowed}")
  if objective.negatives in PLAIN_ONLY and objective.loss != "info_nce":
    raise ValueError(f"objective.negatives={objective.negatives!r} needs objective.loss='info_nce'")


def metadata_fields(objective) -> tuple[str, ...]:
  """Batch fields the loss reads besides the signals and masks."""
  if objective.loss == "dash":
    return ("age", "sex", "site", "recording")
  return ("recording",) if objective.negatives == "all_tokens" else ()


def _dash_kwargs(objective) -> dict:
  return {k: getattr(objective, k) for k in ("sigma_age", "alpha_sex", "gamma_same", "gamma_diff", "eps")}


def negative_weights(batch: dict, B: int, W: int, objective) -> tuple[jax.Array, jax.Array]:
  """(w, h): [B, B] for per-step negatives, [B*W, B*W] (token n = b*W + l) for all_tokens and
  every_token, [W, W] for within_window."""
  if objective.negatives == "within_window":
    return plain_weights(W)
  if objective.negatives == "every_token":
    return plain_weights(B * W)
  if objective.negatives == "per_step":
    if objective.loss == "info_nce":
      return plain_weights(B)
    return dash_weights(batch["age"], batch["sex"], batch["site"], batch["recording"],
                        **_dash_kwargs(objective))
  rec_N = jnp.repeat(jnp.asarray(batch["recording"]), W)
  if objective.loss == "info_nce":
    same_NxN = (rec_N[:, None] == rec_N[None, :]) & ~jnp.eye(B * W, dtype=bool)
    w, h = plain_weights(B * W)
    return jnp.where(same_NxN, 0.0, w), h  # weight 0: excluded from the negatives
  meta = [jnp.repeat(jnp.asarray(batch[k]), W) for k in ("age", "sex", "site")]
  return dash_weights(*meta, rec_N, **_dash_kwargs(objective))


def contrastive_loss(z_BxMxWxP: jax.Array, present_BxMxW: jax.Array, batch: dict,
                     objective) -> tuple[jax.Array, dict]:
  """The configured objective over M encoded modalities' projections (normalised here)."""
  B, M, W, P = z_BxMxWxP.shape
  if M < 2:
    raise ValueError(f"a cross-modal objective needs at least two modalities, the batch has {M}")
  z_BxMxWxP = z_BxMxWxP / jnp.maximum(jnp.linalg.norm(z_BxMxWxP, axis=-1, keepdims=True), 1e-12)
  w, h = negative_weights(batch, B, W, objective)

  def pair(za_BxWxP, zb_BxWxP, valid_BxW):
    if objective.negatives in ("all_tokens", "every_token"):
      za_BxWxP, zb_BxWxP = za_BxWxP.reshape(B * W, 1, P), zb_BxWxP.reshape(B * W, 1, P)
      valid_BxW = valid_BxW.reshape(B * W, 1)
    elif objective.negatives == "within_window":  # windows play the epoch positions' part
      za_BxWxP, zb_BxWxP = za_BxWxP.swapaxes(0, 1), zb_BxWxP.swapaxes(0, 1)
      valid_BxW = valid_BxW.T
    loss, acc = dash_info_nce_with_accuracy(za_BxWxP, zb_BxWxP, w, h, objective.temperature,
                                            objective.hard_scale, valid_BxW)
    return loss, acc, valid_BxW.any()

  strategy = objective.pair_strategy
  if strategy == "pair_first":
    if M != 2:
      raise ValueError(f"pair_first needs exactly the two encoded modalities, got {M}")
    a_A, b_BxAxWxP = [0], z_BxMxWxP[:, 1:]
    valid_BxAxW = present_BxMxW[:, :1] & present_BxMxW[:, 1:]
  elif strategy == "all_pairs":
    a_A, b_A = (list(x) for x in zip(*itertools.combinations(range(M), 2)))
    b_BxAxWxP = z_BxMxWxP[:, b_A]
    valid_BxAxW = present_BxMxW[:, a_A] & present_BxMxW[:, b_A]
  elif strategy == "leave_one_out":  # each modality against the mean of the other present ones
    weight_BxMxW = present_BxMxW.astype(jnp.float32)
    others_BxMxW = weight_BxMxW.sum(1, keepdims=True) - weight_BxMxW
    total_BxWxP = (z_BxMxWxP * weight_BxMxW[..., None]).sum(1)
    b_BxAxWxP = (total_BxWxP[:, None] - z_BxMxWxP * weight_BxMxW[..., None]) / jnp.maximum(
        others_BxMxW, 1.0)[..., None]
    a_A, valid_BxAxW = list(range(M)), present_BxMxW & (others_BxMxW > 0)
  else:
    raise ValueError(f"objective.pair_strategy={strategy!r}; choose from {STRATEGIES}")
  # One traced body for every pair (not one copy per pair: 21 at seven modalities, most of the
  # step's compile time and as many kernels). Per-step negatives keep A small B x B matrices per
  # epoch position, so the pairs run as one batched computation; the token-level negatives'
  # [B*W, B*W] matrices would be A times the memory, so those pairs run one after another.
  inputs = (z_BxMxWxP[:, a_A], b_BxAxWxP, valid_BxAxW)
  if objective.negatives in ("all_tokens", "every_token"):
    loss_A, acc_A, usable_A = jax.lax.map(lambda x: pair(*x), jax.tree.map(
        lambda t: jnp.moveaxis(t, 1, 0), inputs))
  else:
    loss_A, acc_A, usable_A = jax.vmap(pair, in_axes=1)(*inputs)
  usable_A = usable_A.astype(jnp.float32)
  denom = jnp.maximum(usable_A.sum(), 1.0)
  return (loss_A * usable_A).sum() / denom, {"retrieval_top1": (acc_A * usable_A).sum() / denom}
