"""`sleepjax train`: the training loop. Resumes from the latest checkpoint in the workdir."""

import os
import time

import jax
from absl import logging

from sleepjax import sharding
from sleepjax.data import pipeline
from sleepjax.data.manifest import read_manifest, training_modalities
from sleepjax.train import checkpoint, metrics, state as state_lib
from sleepjax.train.optim import make_optimizer
from sleepjax.train.step import make_train_step


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def train_dir(workdir: str) -> str:
  return os.path.join(workdir, "train")


def check_batch(global_batch: int, mesh) -> int:
  """Per-process batch size; the global batch must split evenly over processes and batch shards."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(f"data.global_batch={global_batch} must divide by the {shards} batch shards "
                     f"and {jax.process_count()} processes")
  return global_batch // jax.process_count()


def setup(config, workdir: str):
  """What training and evaluation share: mesh, manifest, model modalities, optimizer."""
  mesh = sharding.make_mesh(config.mesh)
  manifest = read_manifest(data_dir(config, workdir))
  names = training_modalities(manifest, config.data.get("modalities", ()))
  modalities = state_lib.model_modalities(manifest, names)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  return mesh, manifest, modalities, tx, schedule


def train(config, workdir: str) -> dict:
  """Trains for config.train.steps steps; returns the last logged metrics."""
  mesh, manifest, modalities, tx, schedule = setup(config, workdir)
  config = config.copy_and_resolve_references()  # the checkpoint's config names what is encoded
  with config.unlocked():
    config.data.modalities = tuple(modalities)
  graphdef, abstract, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  logging.info("model: %.2fM parameters, mesh %s", n_params / 1e6, dict(mesh.shape))

  local_batch = check_batch(config.data.global_batch, mesh)
  it = iter(pipeline.make_dataset(
      manifest, "train", list(modalities), window=config.data.window_epochs,
      local_batch=local_batch, seed=config.seed, train=True,
      sampling=config.data.modality_sampling, pair_weights=dict(config.data.pair_weights) or None,
      modality_dropout=config.data.modality_dropout, min_modalities=config.data.min_modalities,
      caption_len=config.data.caption_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      read_threads=config.data.read_threads, prefetch=config.data.prefetch,
      workers=config.data.workers, verify=config.data.verify_shards,
      subject_fraction=config.data.get("subject_fraction", 1.0)))

  manager = checkpoint.make_manager(os.path.join(train_dir(workdir), "checkpoints"), config)
  if (latest := manager.latest_step()) is not None:
    state = checkpoint.restore(manager, latest, abstract, it)
    logging.info("resumed from step %d", latest)
  else:
    state = state_lib.init_state(config, modalities, tx, state_sh, config.seed)

  batch_sh = sharding.batch_sharding(mesh)
  step_fn = jax.jit(make_train_step(graphdef, tx, schedule, config),
                    in_shardings=(state_sh, batch_sh),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  writer = metrics.create_writer(os.path.join(train_dir(workdir), "tb"))
  if int(state.step) == 0:
    writer.write_hparams({"params": n_params, **{k: str(v) for k, v in config.model.items()}})

  step, last = int(state.step), {}
  # A time-limited job that requeues runs a chunk of the schedule per job; the schedule itself
  # always spans train.steps.
  stop = config.train.steps
  if config.train.stop_after_steps:
    stop = min(stop, step + config.train.stop_after_steps)
  wait, t_last, step_last = 0.0, time.perf_counter(), step
  with jax.set_mesh(mesh):
    while step < stop:
      t0 = time.perf_counter()
      batch = pipeline.to_global(next(it), batch_sh)
      wait += time.perf_counter() - t0
      state, step_metrics = step_fn(state, batch)
      step += 1
      checkpoint.save(manager, step, state, it, config, force=step == stop)
      if step % config.train.log_every == 0 or step == stop:
        last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        dt = time.perf_counter() - t_last
        last.update({"steps_per_s": (step - step_last) / dt,
                     "examples_per_s": (step - step_last) * config.data.global_batch / dt,
                     "data_wait_frac": wait / dt})
        writer.write_scalars(step, last)
        wait, t_last, step_last = 0.0, time.perf_counter(), step
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return last
