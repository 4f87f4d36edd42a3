"""Symmetric InfoNCE between modalities, per epoch token, over the global batch.

Tokens are flattened to N = B*W rows; under jit with a batch-sharded input XLA gathers the other
devices' rows, so negatives come from every device and host.
"""

import itertools

import jax
import jax.numpy as jnp

_NEG = -1e9


def info_nce(za_NxP: jax.Array, zb_NxP: jax.Array, valid_N: jax.Array,
             temperature: float) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE where row i of `za` and `zb` are positives; invalid rows are ignored.

  Returns (loss, top-1 retrieval accuracy a->b), both averaged over valid rows.
  """
  logits_NxN = za_NxP @ zb_NxP.T / temperature
  pair_NxN = valid_N[:, None] & valid_N[None, :]
  logits_NxN = jnp.where(pair_NxN, logits_NxN, _NEG)
  diag_N = jnp.diagonal(logits_NxN)
  loss_a = jax.nn.logsumexp(logits_NxN, axis=1) - diag_N
  loss_b = jax.nn.logsumexp(logits_NxN, axis=0) - diag_N
  n = jnp.maximum(valid_N.sum(), 1)
  loss = jnp.where(valid_N, 0.5 * (loss_a + loss_b), 0.0).sum() / n
  hit_N = jnp.argmax(logits_NxN, axis=1) == jnp.arange(len(valid_N))
  return loss, jnp.where(valid_N, hit_N, False).sum() / n


def pairwise_info_nce(z_BxMxWxP: jax.Array, present_BxMxW: jax.Array, temperature: float,
                      strategy: str, rng: jax.Array) -> tuple[jax.Array, dict]:
  """InfoNCE over modality pairs.

  strategy: `all_pairs` (mean over pairs that have valid tokens) or `random_pair` (one pair drawn
  uniformly per step among those pairs, as sleep2vec).
  """
  B, M, W, P = z_BxMxWxP.shape
  pairs = list(itertools.combinations(range(M), 2))
  if not pairs:
    raise ValueError("pairwise InfoNCE needs at least two modalities")
  z_MxNxP = z_BxMxWxP.transpose(1, 0, 2, 3).reshape(M, B * W, P)
  present_MxN = present_BxMxW.transpose(1, 0, 2).reshape(M, B * W)
  losses, accs, usable = [], [], []
  for a, b in pairs:
    valid_N = present_MxN[a] & present_MxN[b]
    loss, acc = info_nce(z_MxNxP[a], z_MxNxP[b], valid_N, temperature)
    losses.append(loss), accs.append(acc), usable.append(valid_N.any())
  loss_K, acc_K, usable_K = jnp.stack(losses), jnp.stack(accs), jnp.stack(usable).astype(jnp.float32)
  if strategy == "all_pairs":
    weight_K = usable_K
  elif strategy == "random_pair":
    pick = jax.random.categorical(rng, jnp.log(usable_K + 1e-12))
    weight_K = jax.nn.one_hot(pick, len(pairs)) * usable_K
  else:
    raise ValueError(f"unknown pair strategy {strategy!r} (all_pairs, random_pair)")
  denom = jnp.maximum(weight_K.sum(), 1.0)
  return (loss_K * weight_K).sum() / denom, {"retrieval_top1": (acc_K * weight_K).sum() / denom}
