"""`sleepjax adapt`: new modalities grafted onto a pretrained sleep2vec model (sleep2vec's adapt).

From the newest checkpoint of `adapt.pretrained`, the model is rebuilt with `adapt.new_modalities`
added: every pretrained parameter is copied in (for the tables with one row per modality,
`modality_embed` and `mask_token`, row by row), the new signal tokenizers and table rows keep
their fresh initialisation. Then, on this workdir's data (pair_first sampling):

  stage 1  `adapt.stage1_steps`: only the new tokenizers (and the new rows) train, against the
           frozen model; every pair drawn involves a new modality;
  stage 2  `adapt.stage2_steps`: everything trains, the learning rate scaled per group through
           `optax.multi_transform` (encoder `adapt.encoder_lr_scale`, pretrained tokenizers
           `adapt.tokenizer_lr_scale`, new `adapt.new_lr_scale`), while the share of pairs with a
           new modality anneals (`adapt.new_pair_share` at `adapt.new_pair_share_at` of stage 2).

Batches carry every modality's keys and their pair (`data.pair_keys="all"`; only the pair is read
and encoded), so each stage compiles one train step, whatever pairs it draws (its optimizer, with
the stage's LR scales and schedule, is the other half of that program).

Checkpoints (train state, iterator position, the extended config: data.modalities, pair_first,
pair_keys="all", train.steps = S1 + S2) go to <workdir>/train/checkpoints every
`train.checkpoint_every` steps, at the end of each stage (steps S1 and S1 + S2) and when the run
stops early (`train.stop_after_steps`, SIGTERM/SIGINT as in training), so `sleepjax eval` and
`sleepjax.api.load` open the adapted model like any other. A rerun resumes from the newest
checkpoint: inside a stage, its optimizer state, step, rng and batches continue where they
stopped; at a stage's end, the next stage starts.
Batches and parameters are sharded over the mesh as in training.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from sleepjax import sharding
from sleepjax.data import sampling
from sleepjax.train import checkpoint, optim, restore as restore_lib, state as state_lib, trainer
from sleepjax.train.step import make_train_step

TABLES = ("modality_embed", "mask_token")  # sleep2vec's parameters with one row per modality
GROUPS = ("encoder", "tokenizers", "new")


def _names(path) -> list[str]:
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return [n for n in names if n != "value"]


def group(path, new: tuple[str, ...]) -> str:
  """A parameter's group: `new` (a new modality's tokenizer), `tokenizers` (a pretrained one),
  `tables` (per-modality rows: each row in its modality's group) or `encoder` (everything else)."""
  names = _names(path)
  if "tokenizers" in names:
    return "new" if names[names.index("tokenizers") + 1] in new else "tokenizers"
  return "tables" if names[-1] in TABLES else "encoder"


def graft(fresh, pretrained, old_names: list[str], names: list[str]):
  """`fresh` (the extended model's parameters) with every pretrained leaf and table row in."""
  old = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(pretrained)}

  def one(path, x):
    y = old.get(jax.tree_util.keystr(path))
    if y is None:
      return x
    if _names(path)[-1] in TABLES:
      y = jnp.stack([y[old_names.index(m)] if m in old_names else x[i]
                     for i, m in enumerate(names)])
    if y.shape != x.shape:
      raise ValueError(f"adapt: pretrained {jax.tree_util.keystr(path)} is {y.shape}, the "
                       f"extended model's {x.shape}")
    return jax.device_put(y.astype(x.dtype), x.sharding)
  return jax.tree_util.tree_map_with_path(one, fresh)


def group_scales(params, new: tuple[str, ...], names: list[str],
                 scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies each group's updates by its scale (0: frozen, updates exactly zero); a table's
  rows by their modality's (`new` or `encoder`) scale."""
  labels = jax.tree_util.tree_map_with_path(lambda p, _: group(p, new), params)
  rows_M = np.array([scales["new"] if m in new else scales["encoder"] for m in names], np.float32)

  def by_row(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * rows_M.reshape(-1, *[1] * (u.ndim - 1)).astype(u.dtype),
                        updates), state
  transforms = {g: optax.set_to_zero() if scales[g] == 0 else optax.scale(scales[g])
                for g in GROUPS}
  transforms["tables"] = optax.GradientTransformation(lambda _: optax.EmptyState(), by_row)
  return optax.multi_transform(transforms, labels)


def make_optimizer(config, params, new, names, scales, start: int, steps: int):
  """The run's AdamW (clip, warmup + cosine over this stage) between two `group_scales`: frozen
  groups' gradients are zeroed before clipping (they would shrink the others'), and every group's
  update scaled after (its learning rate, weight decay included). Returns (tx, the learning rate
  by train step, for the logs)."""
  schedule = optim.make_schedule(config.optim, steps)  # the stage's optimizer counts from 0
  frozen = {g: 0.0 if scales[g] == 0 else 1.0 for g in GROUPS}
  tx = optax.chain(
      group_scales(params, new, names, frozen),
      optax.clip_by_global_norm(config.optim.grad_clip),
      optax.adamw(schedule, b1=config.optim.b1, b2=config.optim.b2,
                  weight_decay=config.optim.weight_decay, mask=optim.decay_mask),
      group_scales(params, new, names, scales))
  return tx, lambda step: schedule(step - start)


def adapted_config(config, pretrained_config, new: tuple[str, ...]):
  """The pretrained run's config (model, objective, ...) extended by the new modalities, with this
  run's data, mesh, optimizer, train and adapt keys."""
  out = pretrained_config.copy_and_resolve_references()
  with out.unlocked():
    for key in ("data", "mesh", "optim", "train", "adapt", "eval"):
      out[key] = config[key].copy_and_resolve_references()
    old = tuple(pretrained_config.data.modalities)
    out.data.modalities = old + tuple(m for m in new if m not in old)
    out.data.modality_sampling = "pair_first"
    out.data.pair_keys = "all"  # one compiled step per stage, not one per pair
    out.data.pair_weights = {}
    out.train.steps = config.adapt.stage1_steps + config.adapt.stage2_steps
  return out


def adapt(config, workdir: str) -> dict:
  """Runs (or resumes) both stages; returns the last step's metrics."""
  a = config.adapt
  if not a.pretrained:
    raise ValueError("adapt: set --config.adapt.pretrained=<the pretrained run's workdir>")
  new = tuple(a.new_modalities)
  pre = restore_lib.restore(trainer.checkpoint_dir(a.pretrained), config)
  if pre.config.model.family != "sleep2vec":
    raise ValueError(f"adapt grafts signal tokenizers onto sleep2vec; {a.pretrained} is a "
                     f"{pre.config.model.family} model")
  if set(new) & set(pre.modalities) or not new:
    raise ValueError(f"adapt.new_modalities={new}: name modalities the pretrained model "
                     f"({', '.join(pre.modalities)}) lacks")
  config = adapted_config(config, pre.config, new)
  mesh, manifest, modalities, tx_plain, _ = trainer.setup(config, workdir)
  for m, spec in pre.modalities.items():
    if modalities[m] != spec:
      raise ValueError(f"adapt: {m} is {modalities[m]} (rate, channels) in {workdir}'s data, the "
                       f"pretrained model was built for {spec}")
  names = list(modalities)
  graphdef, abstract, state_sh = state_lib.abstract_state(config, modalities, tx_plain, mesh,
                                                          config.seed)
  ckpt = trainer.checkpoint_dir(workdir)
  s1, s2 = a.stage1_steps, a.stage2_steps
  done = max(checkpoint.all_steps(ckpt), default=0)
  if done >= s1 + s2:
    logging.info("adapt: %s is already at step %d", ckpt, done)
    return {}
  if done:
    checkpoint.check_resume_config(checkpoint.saved_config(ckpt, done), config, ckpt)
  if done == s1:  # stage 1 finished: stage 2 starts from its parameters
    params, _ = checkpoint.restore_params(ckpt, abstract, done, "params")
    ema, _ = checkpoint.restore_params(ckpt, abstract, done, "ema_params")
  else:  # a fresh start, or the target a mid-stage checkpoint restores onto
    fresh = state_lib.init_state(config, modalities, tx_plain, state_sh, config.seed).params
    params = graft(fresh, pre.params, list(pre.modalities), names)
    ema = jax.tree.map(jnp.copy, params)  # own buffers: the step donates the state
  logging.info("adapt: %s + %s, %d parameters (%d new)", list(pre.modalities), list(new),
               state_lib.count_params(params),
               state_lib.count_params(params) - state_lib.count_params(pre.params))
  manager = checkpoint.make_manager(ckpt, config)
  stages = [(0, s1, {"encoder": 0.0, "tokenizers": 0.0, "new": a.new_lr_scale},
             sampling.PairShare(new, (0.0,), (1.0,), s1)),
            (s1, s2, {"encoder": a.encoder_lr_scale, "tokenizers": a.tokenizer_lr_scale,
                      "new": a.new_lr_scale},
             sampling.PairShare(new, tuple(a.new_pair_share_at), tuple(a.new_pair_share), s2))]
  # this run's step budget (a requeued job's chunk); a signal stops it sooner
  stop = s1 + s2 if not config.train.stop_after_steps else min(
      s1 + s2, done + config.train.stop_after_steps)
  last, step = {}, done
  try:
    with trainer.Preemption() as preempt:
      for start, steps, scales, share in stages:
        if start + steps <= done or not steps:
          continue
        if step >= stop or preempt.requested:
          break
        resume = done if start < done else 0  # inside this stage: its checkpoint
        params, ema, last, step = _stage(config, manifest, modalities, mesh, graphdef, manager,
                                         (params, ema), new, scales, share, (start, steps),
                                         resume, stop, preempt)
  finally:
    manager.wait_until_finished()
    manager.close()
  if step < s1 + s2:
    logging.warning("adapt stopped at step %d: checkpoint saved in %s; run the same command to "
                    "resume", step, ckpt)
  return last


def _stage(config, manifest, modalities, mesh, graphdef, manager, params_ema, new, scales, share,
           span: tuple[int, int], resume: int, stop: int, preempt):
  """Runs steps span[0] + 1 .. span[0] + span[1] (from `resume` when > 0), stopping after step
  `stop` or a signal; returns (params, EMA params, the last step's metrics, the step reached)."""
  (start, steps), (params, ema) = span, params_ema
  tx, schedule = make_optimizer(config, params, new, list(modalities), scales, start, steps)
  state = state_lib.TrainState(
      step=jnp.asarray(start, jnp.int32), params=params, opt_state=jax.jit(tx.init)(params),
      rng=jax.random.key_data(jax.random.key(config.seed + 1 + start)), ema_params=ema)
  # The stage state's shardings (scalars: replicated) in and out of the step, as the trainer's:
  # a first step fed other shardings than its outputs' would compile a second program.
  state_sh = jax.tree.map(lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding)
                          else sharding.replicated(mesh), state)
  state = jax.device_put(state, state_sh)
  step_fn = jax.jit(make_train_step(graphdef, tx, schedule, config),
                    in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  it = trainer.batches(config, manifest, modalities, mesh, pair_share=share)
  if resume:  # the fresh stage state is the target: its shapes and shardings
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, state_sh)
    state = checkpoint.restore(manager, resume, target, it)
  step = int(state.step)
  logging.info("adapt stage from step %d: %d steps, LR scales %s, at step %d", start, steps,
               scales, step)
  meta = {"schedule": [[0, config.train.steps]], "split_hash": manifest.get("split_hash")}
  metrics = {}
  try:
    with jax.set_mesh(mesh):
      while step < start + steps:
        state, metrics = step_fn(state, next(it))
        step += 1
        end = step == start + steps
        stopping = end or step >= stop or preempt.should_stop(step)
        if step % config.train.log_every == 0 or stopping:
          logging.info("adapt step %d: %s", step, ", ".join(
              f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())))
        checkpoint.save(manager, step, state, it, config, force=stopping,
                        meta={**meta, "adapt_stage_end": step} if end else meta)
        if stopping:
          break
  finally:
    it.close()
  return state.params, state.ema_params, {k: float(v) for k, v in metrics.items()}, step
