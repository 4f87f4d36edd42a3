"""The interface every model family implements; the trainer and evaluator only see this."""

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family.

  build(config, modalities, rngs) -> nnx.Module
      `modalities`: name -> (rate Hz, channels); the module must accept any subset of them.
  loss(model, batch, rng) -> (loss scalar, metrics dict)
      train mode; `batch` is the nested batch (`sleepjax.data.pipeline.nest`); the model encodes
      exactly the modalities whose `signals`/`masks` keys the batch carries.
  embed(model, batch) -> dict
      at least "epoch": [B, W, D] fused per-epoch embedding, plus family extras.
  flops(config, modalities, global_batch, window) -> float
      analytic training FLOPs per step (forward + backward = 3 x forward matmul FLOPs).
  fields(config) -> tuple[str, ...]
      batch fields the loss reads beyond signals and masks.
  encode(model, batch, rng) -> embeddings pytree;  loss_from(model, embeddings, batch, rng) ->
      (loss, metrics): optional split of `loss` (loss == loss_from(encode(...))) that gradient
      accumulation with global negatives needs (`train.microbatches`, sleepjax/train/gradcache.py):
      `encode` is per example, `loss_from` sees the whole batch.
  prepare(model, batch, rng) -> batch: optional draws made once per global batch (sleep2vec's
      pair_first pair); `loss` applies it with the first half of `jax.random.split(rng)` and
      encodes with the second, and gradient accumulation does the same before splitting the
      batch, so every micro-batch shares the draw and k micro-batches equal one batch.
  """
  name: str
  build: Callable[..., Any]
  loss: Callable[..., Any]
  embed: Callable[..., Any]
  flops: Callable[..., float]
  fields: Callable[..., tuple]
  encode: Callable[..., Any] | None = None
  loss_from: Callable[..., Any] | None = None
  prepare: Callable[..., Any] | None = None
