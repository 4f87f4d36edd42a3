"""Staging heads trained through the encoder: the supervised-from-scratch baseline (random init,
every parameter trained) and fine-tuning (pretrained init, tokenizers frozen — sleep2vec's recipe;
or, with `eval.finetune_lora_rank` > 0, the whole backbone frozen and LoRA adapters trained on its
attention projections, `sleepjax.train.lora`). The number of trained parameters is logged.

The encoder's fused epoch embedding feeds a linear stage head; the loss is class-balanced
cross-entropy over the labelled epochs of whole training segments. Labels are thinned to a fraction
with a seeded draw per (recording, epoch) and, for the cross-site variant, kept only on the
training sites. Every process trains on its own slice of the records (global batches).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from sleepjax import sharding
from sleepjax.data import pipeline
from sleepjax.evaluate import embed, metrics, tasks as tasks_lib
from sleepjax.modalities import STAGES
from sleepjax.train import lora as lora_lib
from sleepjax.train.trainer import check_batch


def local_batches(ctx, split: str) -> list[dict]:
  """This process's slice of `split` as local batches, padded so every process has as many."""
  config, mesh = ctx.config, ctx.mesh
  local_batch = check_batch(config.data.global_batch, mesh)
  P, p = jax.process_count(), jax.process_index()
  n_batches = -(-(-(-ctx.manifest["splits"][split]["records"] // P)) // local_batch)
  ds = pipeline.make_dataset(ctx.manifest, split, ctx.modalities, window=None,
                             local_batch=local_batch, seed=0, train=False,
                             read_threads=config.data.read_threads, process_index=p,
                             process_count=P, verify=config.data.verify_shards)
  out = []
  for local in ds:
    n = len(local["stage"])
    local = {k: v for k, v in local.items() if not k.startswith("caption")}
    local = embed.with_subset(local, ctx.modalities, embed.shown(config, ctx.modalities))
    if n < local_batch:
      local = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)])
               for k, v in local.items()}
      local["stage"][n:] = -1
    out.append(local)
  while len(out) < n_batches:
    out.append({k: np.zeros_like(v) for k, v in out[0].items()})
    out[-1]["stage"][:] = -1
  return out


def _thin(ctx, batch: dict, fraction: float, seed: int, sites) -> np.ndarray:
  """Stage labels kept for training: a seeded `fraction` of epochs, on `sites` only."""
  rec, ep = batch["recording"][:, None], batch["epoch_index"]
  u = np.random.default_rng([seed, 4242]).random((len(ctx.recording_ids), 1 + int(ep.max())))
  keep = u[rec, ep] < fraction
  if sites is not None:
    keep &= np.isin(np.asarray(ctx.manifest["sites"])[batch["site"]], list(sites))[:, None]
  return np.where(keep, batch["stage"], -1)


def train_head(ctx, encoder, *, freeze_tokenizers: bool, fraction: float, seed: int, sites=None,
               lora_rank: int = 0):
  """Trains encoder + linear head, or (`lora_rank` > 0) LoRA adapters of the frozen encoder + head;
  returns (params, head, adapters): params as trained (with LoRA: the frozen ones, untouched),
  adapters None without LoRA. `lora.merge` folds adapters into params."""
  mesh, batch_sh = ctx.mesh, sharding.batch_sharding(ctx.mesh)
  graphdef, embed = encoder.graphdef, encoder.embed
  K = len(STAGES)
  batches = ctx.batches(ctx.split("train"))
  labelled = [_thin(ctx, b, fraction, seed, sites) for b in batches]
  counts = np.bincount(np.concatenate([y.reshape(-1) for y in labelled]) + 1, minlength=K + 1)[1:]
  weight_Y = jnp.asarray(np.where(counts > 0, counts.sum() / (K * np.maximum(counts, 1)), 0.0))
  D = jax.eval_shape(lambda p, b: embed(nnx.merge(graphdef, p), b)["epoch"], encoder.params,
                     pipeline.nest(batches[0])).shape[-1]
  head = {"w": 0.01 * jax.random.normal(jax.random.key(seed), (D, K)), "b": jnp.zeros(K)}

  def trainable(path, _):  # path entries are keys (DictKey('tokenizers')), not strings
    names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
    return "frozen" if freeze_tokenizers and "tokenizers" in names else "train"
  labels = jax.tree_util.tree_map_with_path(trainable, encoder.params)
  cfg = ctx.config.eval
  lr = cfg.finetune_lr
  tx_enc = optax.multi_transform({"train": optax.adamw(lr, weight_decay=0.01),
                                  "frozen": optax.set_to_zero()}, labels)
  tx_head = optax.adam(lr)
  params = encoder.params
  adapters = (lora_lib.init(params, lora_rank, tuple(cfg.finetune_lora_targets),
                            jax.random.key(seed + 1)) if lora_rank else None)
  frozen = ("backbone (LoRA)" if lora_rank else "tokenizers" if freeze_tokenizers else "nothing")
  trained = (lora_lib.count(adapters) if lora_rank else
             sum(x.size for x, g in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
                 if g == "train"))
  logging.info("finetune: %d of %d encoder parameters train (+%d head; frozen: %s)", trained,
               lora_lib.count(params), D * K + K, frozen)

  def loss_fn(params, adapters, head, batch, y):
    if adapters is not None:
      params = lora_lib.merge(params, adapters, cfg.finetune_lora_alpha, lora_rank)
    x = embed(nnx.merge(graphdef, params), batch)["epoch"].astype(jnp.float32)
    logits = x @ head["w"] + head["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
    w = jnp.where(y >= 0, weight_Y[jnp.maximum(y, 0)], 0.0)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1e-6)

  @jax.jit
  def step(params, adapters, head, opt_enc, opt_head, batch, y):
    if adapters is None:
      g_enc, g_head = jax.grad(loss_fn, argnums=(0, 2))(params, adapters, head, batch, y)
      up_enc, opt_enc = tx_enc.update(g_enc, opt_enc, params)
      params = optax.apply_updates(params, up_enc)
    else:  # the backbone is neither differentiated nor updated
      g_enc, g_head = jax.grad(loss_fn, argnums=(1, 2))(params, adapters, head, batch, y)
      up_enc, opt_enc = tx_head.update(g_enc, opt_enc)
      adapters = optax.apply_updates(adapters, up_enc)
    up_head, opt_head = tx_head.update(g_head, opt_head)
    return params, adapters, optax.apply_updates(head, up_head), opt_enc, opt_head

  opt_enc = tx_enc.init(params) if adapters is None else tx_head.init(adapters)
  opt_head = tx_head.init(head)
  with jax.set_mesh(mesh):
    for i in range(cfg.finetune_steps):
      j = i % len(batches)
      g = pipeline.to_global({**batches[j], "stage": labelled[j]}, batch_sh)
      params, adapters, head, opt_enc, opt_head = step(params, adapters, head, opt_enc, opt_head,
                                                       g, g["stage"])
  return params, jax.device_get(head), adapters


def _run(ctx, init: str, freeze_tokenizers: bool, name: str) -> dict:
  sites = ctx.site_sides()
  cfg = ctx.config.eval
  lora_rank = cfg.finetune_lora_rank if init == "pretrained" else 0
  out = {"init": init, "freeze_tokenizers": freeze_tokenizers, "steps": cfg.finetune_steps,
         "lora": ({"rank": lora_rank, "alpha": cfg.finetune_lora_alpha,
                   "targets": list(cfg.finetune_lora_targets)} if lora_rank else None)}
  for variant, train_sites, test_sites in (("in_site", None, None), ("cross_site", *sites)):
    if variant == "cross_site" and sites[0] is None:
      continue
    curve = {}
    for fraction in ctx.config.eval.finetune_fractions:
      runs = []
      for seed in ctx.config.eval.finetune_seeds:
        enc = ctx.encoder(init)
        params, head, adapters = train_head(ctx, enc, freeze_tokenizers=freeze_tokenizers,
                                            fraction=fraction, seed=seed, sites=train_sites,
                                            lora_rank=lora_rank)
        if adapters is not None:  # evaluated as a plain model: the merged weights
          params = lora_lib.merge(params, adapters, cfg.finetune_lora_alpha, lora_rank)
        tuned = dataclasses.replace(enc, name=f"{name}/{variant}/{fraction}/{seed}", params=params)
        test = ctx.embed_with(tuned, ctx.split("test"))
        rows = (None if test_sites is None else
                np.isin(np.asarray(ctx.manifest["sites"])[test["site"]], list(test_sites)))
        x, y = tasks_lib.epochs(test, rows)
        pred = np.argmax(x @ head["w"] + head["b"], -1)
        runs.append({"macro_f1": metrics.macro_f1(y, pred, len(STAGES)),
                     "kappa": metrics.cohen_kappa(y, pred, len(STAGES)),
                     "accuracy": metrics.accuracy(y, pred)})
      curve[str(fraction)] = {k: metrics.mean_sd([r[k] for r in runs]) for k in runs[0]}
    out[variant] = curve
  return out


def supervised(ctx) -> dict:
  """The same architecture trained from scratch on the same labels (random init, all trained)."""
  return _run(ctx, "random_init", False, "supervised")


def finetune(ctx) -> dict:
  """Pretrained encoder fine-tuned with its tokenizers frozen (or, `eval.finetune_lora_rank` > 0,
  frozen whole with LoRA adapters), plus a linear stage head."""
  return _run(ctx, "pretrained", True, "finetune")


TASKS = {"supervised": supervised, "finetune": finetune}