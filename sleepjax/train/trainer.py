"""`sleepjax train`: the training loop. Resumes from the newest checkpoint that restores.

Faults: SIGTERM/SIGINT finish the current step, save (state + iterator + config) and return (exit
0); multi-process jobs agree on the step through JAX's preemption sync point. A step whose loss or
gradients are not finite leaves the state unchanged (inside the jitted step) and is counted;
`train.max_nonfinite_steps` such steps in a row stop the run with `NonFiniteError`. No checkpoint is
ever written from a non-finite state.

Accounting: metrics are means over each log interval; `data_wait_frac` is the time the host blocked
on the input iterator (next() plus the host-to-device copy); goodput splits wall time into init,
compile (first step), data, step, checkpoint; MFU uses the family's analytic FLOPs.
"""

import os
import signal
import threading
import time

import jax
import numpy as np
from absl import logging

from sleepjax import sharding
from sleepjax.data import pipeline, prefetch
from sleepjax.data.manifest import read_manifest, training_modalities
from sleepjax.train import checkpoint, gradcache, metrics, optim, state as state_lib
from sleepjax.train.step import ema_initial_weight, make_train_step


class NonFiniteError(ValueError):
  """Too many consecutive steps with a non-finite loss or gradients (a ValueError, so the CLI
  reports it in one line)."""


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def train_dir(workdir: str) -> str:
  return os.path.join(workdir, "train")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(train_dir(workdir), "checkpoints")


def check_batch(global_batch: int, mesh) -> int:
  """Per-process batch size; the global batch must split evenly over processes and batch shards."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(f"data.global_batch={global_batch} must divide by the {shards} batch shards "
                     f"and {jax.process_count()} processes")
  return global_batch // jax.process_count()


def setup(config, workdir: str, schedule_segments=None):
  """What training and evaluation share: mesh, manifest, model modalities, optimizer."""
  mesh = sharding.make_mesh(config.mesh)
  manifest = read_manifest(data_dir(config, workdir))
  names = training_modalities(manifest, config.data.get("modalities", ()))
  modalities = state_lib.model_modalities(manifest, names)
  tx, schedule = optim.make_optimizer(config.optim, schedule_segments or config.train.steps)
  return mesh, manifest, modalities, tx, schedule


class Preemption:
  """SIGTERM / SIGINT -> stop after the current step (a second SIGINT interrupts at once).

  One process: Python signal handlers set a flag. Several processes: JAX's preemption notifier
  (installed by `jax.distributed.initialize`) receives SIGTERM and every process stops at the same
  step through `multihost_utils.reached_preemption_sync_point`.
  """

  def __init__(self):
    self.requested, self.signal_name, self._previous = False, "", {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signal_name = True, signal.Signals(signum).name
    logging.warning("%s: finishing the current step, then saving a checkpoint", self.signal_name)

  def should_stop(self, step: int) -> bool:
    if self._multi and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.requested, self.signal_name = True, "preemption notice"
      except RuntimeError:  # no preemption service (e.g. not started by jax.distributed)
        pass
    return self.requested


def _poison(local: dict) -> dict:
  """A batch whose signals are all NaN (tests inject it via `train.inject_nan_steps`)."""
  return {k: (v * np.nan if k.startswith("signals/") else v) for k, v in local.items()}


def _fields(config) -> tuple[str, ...] | None:
  """The batch fields the family's loss reads (the pipeline reads only those)."""
  from sleepjax.families import get_family  # pylint: disable=g-import-not-at-top
  return tuple(get_family(config).fields(config))


def _flops_per_step(config, modalities) -> float | None:
  from sleepjax.families import get_family  # pylint: disable=g-import-not-at-top
  try:
    return float(get_family(config).flops(config, modalities, config.data.global_batch,
                                          config.data.window_epochs))
  except Exception as e:  # pylint: disable=broad-except  (accounting must never stop training)
    logging.warning("no analytic FLOPs for MFU: %s", e)
    return None


def _resume_plan(config, ckpt: str, step: int):
  """(schedule segments, saved meta) of checkpoint `step`; refuses meaning-changing resumes."""
  saved = checkpoint.saved_config(ckpt, step)
  checkpoint.check_resume_config(saved, config, ckpt)
  meta = checkpoint.saved_meta(ckpt, step)
  saved_steps = (saved or {}).get("train", {}).get("steps", config.train.steps)
  segments = optim.extend_segments(meta.get("schedule", [[0, saved_steps]]), step,
                                   config.train.steps)
  return segments, meta


def train(config, workdir: str) -> dict:
  """Trains up to config.train.steps steps; returns the last logged metrics (with `preempted`
  set to 1.0 when a signal stopped the run early)."""
  t_start = time.perf_counter()
  mesh, manifest, modalities, _, _ = setup(config, workdir)
  gradcache.check_microbatches(config.data.global_batch, mesh.shape["data"] * mesh.shape["fsdp"],
                               config.train.get("microbatches", 1))
  config = config.copy_and_resolve_references()  # the checkpoint's config names what is encoded
  with config.unlocked():
    config.data.modalities = tuple(modalities)
  ckpt = checkpoint_dir(workdir)
  local_batch = check_batch(config.data.global_batch, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  inject = set(config.train.get("inject_nan_steps", ()))
  # The step the last batch read ahead feeds (restoring the iterator starts the read-ahead).
  next_step = [0]

  def to_device(local):
    next_step[0] += 1
    if next_step[0] in inject:
      local = _poison(local)
    return pipeline.to_global(local, batch_sh)

  # Batches are read and copied to the devices in a background thread while the step runs.
  it = prefetch.DevicePrefetch(iter(pipeline.make_dataset(
      manifest, "train", list(modalities), window=config.data.window_epochs,
      local_batch=local_batch, seed=config.seed, train=True,
      sampling=config.data.modality_sampling, pair_weights=dict(config.data.pair_weights) or None,
      modality_dropout=config.data.modality_dropout, min_modalities=config.data.min_modalities,
      caption_len=config.data.caption_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      read_threads=config.data.read_threads, prefetch=config.data.prefetch,
      workers=config.data.workers, verify=config.data.verify_shards,
      subject_fraction=config.data.get("subject_fraction", 1.0), fields=_fields(config))),
      to_device,
      depth=config.data.get("device_prefetch", 2))

  manager = checkpoint.make_manager(ckpt, config)

  def resume(step: int):
    """One checkpoint: refuses a meaning-changing resume, then state, then iterator position."""
    segments, meta = _resume_plan(config, ckpt, step)
    tx, _ = optim.make_optimizer(config.optim, segments)
    _, abstract, _ = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
    next_step[0] = step
    return segments, meta, checkpoint.restore(manager, step, abstract, it)

  found = checkpoint.restore_newest(ckpt, resume, config.train.get("resume_step", 0) or None,
                                    choose="--config.train.resume_step=<step>")
  segments, meta, state = [[0, config.train.steps]], {}, None
  if found is not None:
    (segments, meta, state), latest = found
    # Newer steps (unreadable, or passed over by train.resume_step) would block saving those
    # steps again: they move, untouched, to checkpoints/skipped/.
    checkpoint.set_aside(manager, latest)
    logging.info("resumed from step %d", latest)
  tx, schedule = optim.make_optimizer(config.optim, segments)
  graphdef, abstract, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  logging.info("model: %.2fM parameters, mesh %s", n_params / 1e6, dict(mesh.shape))
  ema_base = config.train.get("ema_momentum", 0.996)
  left = ema_initial_weight(config.train.steps, ema_base) if ema_base else 0.0
  if left > 0.01:
    logging.warning("train.ema_momentum=%s over %d steps: the EMA parameters (used by eval) keep "
                    "%.0f %% of the random init; lower it for a run this short", ema_base,
                    config.train.steps, 100 * left)
  if len(segments) > 1:
    logging.info("learning-rate schedule segments %s (decay continues, see train/optim.py)", segments)
  if state is None:
    state = state_lib.init_state(config, modalities, tx, state_sh, config.seed)

  step_fn = jax.jit(make_train_step(graphdef, tx, schedule, config),
                    in_shardings=(state_sh, batch_sh),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  writer = metrics.create_writer(os.path.join(train_dir(workdir), "tb"))
  if int(state.step) == 0:
    writer.write_hparams({"params": n_params, **{k: str(v) for k, v in config.model.items()}})

  train_cfg = config.train
  step, last = int(state.step), {}
  # A time-limited job that requeues runs a chunk of the schedule per job; the schedule itself
  # always spans train.steps (extended as in train/optim.py).
  stop = train_cfg.steps
  if train_cfg.stop_after_steps:
    stop = min(stop, step + train_cfg.stop_after_steps)
  max_bad = train_cfg.get("max_nonfinite_steps", 10)
  profile_steps = train_cfg.get("profile_steps", 0)
  profile_start = step + 3 if profile_steps else -1  # past compilation
  flops = _flops_per_step(config, modalities)
  window, n_dev = config.data.window_epochs, jax.device_count()

  clock = {"init": time.perf_counter() - t_start, "compile": 0.0, "data": 0.0, "step": 0.0,
           "checkpoint": 0.0}
  means = metrics.IntervalMeans()
  counts = {"bad_in_a_row": 0, "skipped_total": int(meta.get("skipped_total", 0))}
  interval = {"t": time.perf_counter(), "step": step, "data": 0.0, "tokens": 0}
  first_step = True
  pending = None

  def consume():
    """Fetches the previous step's metrics (blocks on the device), counts skipped updates."""
    nonlocal pending
    if pending is None:
      return
    at, m = pending
    pending = None
    t0 = time.perf_counter()
    host = jax.device_get(m)
    clock["step"] += time.perf_counter() - t0
    if host.pop("skipped") > 0:
      counts["bad_in_a_row"] += 1
      counts["skipped_total"] += 1
      logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)", at,
                      counts["bad_in_a_row"])
      if counts["bad_in_a_row"] >= max_bad:
        raise NonFiniteError(
            f"{counts['bad_in_a_row']} steps in a row (up to step {at}) had a non-finite loss or "
            f"gradients (train.max_nonfinite_steps={max_bad}); last checkpoint: step "
            f"{manager.latest_step()} in {ckpt}")
    else:
      counts["bad_in_a_row"] = 0
      means.add(host)

  def run_meta():
    # The data split the run trained on: eval refuses a re-prepared cohort whose splits moved.
    return {"schedule": segments, "skipped_total": counts["skipped_total"],
            "split_hash": manifest.get("split_hash")}

  preempt, tracing = Preemption(), False
  try:
    with preempt, jax.set_mesh(mesh):
      while step < stop:
        t0 = time.perf_counter()
        batch = next(it)  # blocks only when input is slower than the step
        t1 = time.perf_counter()
        clock["data"] += t1 - t0
        interval["data"] += t1 - t0
        interval["tokens"] += sum(x.shape[0] * x.shape[1] for x in batch["signals"].values())
        if step == profile_start:
          jax.profiler.start_trace(os.path.join(train_dir(workdir), "tb"), create_perfetto_trace=True)
          tracing = True
        state, step_metrics = step_fn(state, batch)
        step += 1
        if first_step:  # compilation (and the first step) apart from the steady state
          jax.block_until_ready(step_metrics)
          clock["compile"] += time.perf_counter() - t1
          first_step = False
        else:
          clock["step"] += time.perf_counter() - t1
        consume()  # the previous step: the host runs one step ahead of the device
        pending = (step, step_metrics)
        if step == profile_start + profile_steps:
          jax.block_until_ready(step_metrics)
          jax.profiler.stop_trace()
          tracing = False
          logging.info("profile of steps %d-%d written under %s", profile_start + 1, step,
                       os.path.join(train_dir(workdir), "tb", "plugins", "profile"))

        stopping = step == stop or preempt.should_stop(step)
        log_now = step % train_cfg.log_every == 0 or stopping
        if log_now or stopping or manager.should_save(step):
          consume()  # never save or log before this step's finiteness is known
        t2 = time.perf_counter()
        checkpoint.save(manager, step, state, it, config, meta=run_meta(), force=stopping)
        clock["checkpoint"] += time.perf_counter() - t2
        if log_now:
          dt = time.perf_counter() - interval["t"]
          n = step - interval["step"]
          last = means.pop()
          last.update({
              "steps_per_s": n / dt, "examples_per_s": n * config.data.global_batch / dt,
              "epochs_per_s": n * config.data.global_batch * window / dt,
              "tokens_per_s": interval["tokens"] / dt, "data_wait_frac": interval["data"] / dt,
              "skipped_total": counts["skipped_total"]})
          if flops:
            last["tflops_per_s_per_device"] = flops * n / dt / n_dev / 1e12
            if (u := metrics.mfu(flops, dt / n)) is not None:
              last["mfu"] = u
          wall = time.perf_counter() - t_start
          last.update({f"goodput/{k}": v / wall for k, v in clock.items()})
          writer.write_scalars(step, last)
          interval = {"t": time.perf_counter(), "step": step, "data": 0.0, "tokens": 0}
        if stopping and step < stop:
          break
  finally:
    it.close()
    if tracing:
      jax.profiler.stop_trace()
    t2 = time.perf_counter()
    manager.wait_until_finished()
    manager.close()
    clock["checkpoint"] += time.perf_counter() - t2
    writer.flush()
  if preempt.requested:
    msg = (f"train: {preempt.signal_name} at step {step}: checkpoint saved in {ckpt}; "
           "run the same command to resume")
    logging.warning(msg)
    print(msg, flush=True)
    last["preempted"] = 1.0
  return last
