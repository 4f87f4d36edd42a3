"""Gradient accumulation that keeps every contrastive negative global (GradCache, Gao et al. 2021).

`train.microbatches` = k > 1 splits the global batch into k micro-batches and
1. embeds every micro-batch without gradients (`family.encode`),
2. computes the loss on the whole batch's embeddings and its gradient with respect to them (and to
   the parameters the loss itself uses, e.g. a projection head; `family.loss_from`),
3. back-propagates that embedding gradient micro-batch by micro-batch through the encoder (a
   second forward per micro-batch under `jax.vjp`), summing parameter gradients.

The loss sees exactly the negatives of the full batch; peak activation memory is one micro-batch's
encoder plus the whole batch's embeddings. Costs one extra encoder forward. The families need the
split `encode(model, batch, rng) -> embeddings` / `loss_from(model, embeddings, batch, rng) ->
(loss, metrics)` with `loss == loss_from(encode(...))`. Draws made once per global batch (the
family's `prepare`: sleep2vec's pair) are made before the split, as `loss` makes them, so every
micro-batch shares them; random draws inside `encode` (mask tokens) are made per micro-batch, so
they differ from the unsplit batch's draws.

Micro-batch i holds rows i, i + k, i + 2k, ...: each device's contiguous shard of the batch splits
locally into k equal parts, with no communication. That needs k to divide the per-device batch;
otherwise XLA silently gathers the batch across devices to cut it (25 instead of 12 all-gathers
measured on the tiny config), so that is refused (`check_microbatches`).
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from sleepjax import sharding


def check_microbatches(global_batch: int, batch_shards: int, k: int):
  """Refuses a `train.microbatches` that does not divide each device's share of the batch."""
  if k < 1:
    raise ValueError(f"train.microbatches={k} must be >= 1")
  if global_batch % batch_shards or (global_batch // batch_shards) % k:
    raise ValueError(
        f"train.microbatches={k} must divide the per-device batch: data.global_batch="
        f"{global_batch} over {batch_shards} batch shards (mesh.data x mesh.fsdp) is "
        f"{global_batch / batch_shards:g} per device")


def _batch_shards() -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else mesh.shape["data"] * mesh.shape["fsdp"]


def _split(x, k: int):
  """[B, ...] -> [k, B / k, ...], micro-batch i = rows i::k."""
  y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return _constrain(y, 1)


def _merge(x):
  """[k, B / k, ...] -> [B, ...] (inverse of `_split`)."""
  y = x.swapaxes(0, 1)
  return _constrain(y.reshape(-1, *y.shape[2:]), 0)


def _constrain(x, batch_axis: int):
  if jax.sharding.get_abstract_mesh().empty:
    return x
  spec = [None] * x.ndim
  spec[batch_axis] = sharding.BATCH
  return jax.lax.with_sharding_constraint(x, P(*spec))


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def value_and_grad(family, graphdef, params, batch: dict, rng, microbatches: int):
  """((loss, metrics), grads) of `family` on `batch`, accumulated over `microbatches`."""
  if microbatches <= 1:
    return jax.value_and_grad(lambda p: family.loss(nnx.merge(graphdef, p), batch, rng),
                              has_aux=True)(params)
  if family.encode is None or family.loss_from is None:
    raise ValueError(f"train.microbatches={microbatches}: the {family.name} family has no "
                     "encode/loss_from split (needed to keep negatives global)")
  k = microbatches
  check_microbatches(jax.tree.leaves(batch)[0].shape[0], _batch_shards(), k)
  if family.prepare is not None:  # as `family.loss` does, on the whole batch
    prepare_rng, rng = jax.random.split(rng)
    batch = family.prepare(nnx.merge(graphdef, params), batch, prepare_rng)
  micro = jax.tree.map(lambda x: _split(x, k), batch)
  rngs = jax.random.split(rng, k + 1)

  def encode(p, mb, r):
    return family.encode(nnx.merge(graphdef, p), mb, r)

  # 1. Embeddings of every micro-batch, no gradients kept.
  stacked = jax.lax.map(lambda a: encode(params, *a), (micro, rngs[:k]))
  emb = jax.tree.map(_merge, stacked)

  # 2. Loss over the whole batch; gradient w.r.t. the (float) embeddings and the loss's parameters.
  leaves, treedef = jax.tree_util.tree_flatten(emb)
  floats = [i for i, x in enumerate(leaves) if _is_float(x)]

  def loss(p, float_leaves):
    full = list(leaves)
    for i, x in zip(floats, float_leaves):
      full[i] = x
    e = jax.tree_util.tree_unflatten(treedef, full)
    return family.loss_from(nnx.merge(graphdef, p), e, batch, rngs[k])

  (value, metrics), (g_params, g_floats) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, [leaves[i] for i in floats])
  g_micro = [_split(g, k) for g in g_floats]

  # 3. Back-propagate each micro-batch's embedding gradient through the encoder.
  def body(acc, a):
    mb, r, g_mb = a

    def encode_floats(p):
      out = jax.tree_util.tree_leaves(encode(p, mb, r))
      return [out[i] for i in floats]

    _, vjp = jax.vjp(encode_floats, params)
    (g,) = vjp(list(g_mb))
    return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g), None

  # The sum is kept in float32 whatever the parameters' dtype (bfloat16 under
  # model.param_dtype=bfloat16): k bf16 partial sums would round each other away.
  acc = jax.tree.map(lambda g: g.astype(jnp.float32), g_params)
  grads, _ = jax.lax.scan(body, acc, (micro, rngs[:k], g_micro))
  return (value, metrics), grads
