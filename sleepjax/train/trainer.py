"""`sleepjax train`: the training loop. Resumes from the newest checkpoint that restores.

One short loop: next batch, jitted step, then the hooks of train/hooks.py (non-finite guard,
profiler window, checkpoints, validation loss every `train.val_every` steps, logged metrics).

Faults: SIGTERM/SIGINT finish the current step, save (state + iterator + config) and return (exit
0); multi-process jobs agree on the step through JAX's preemption sync point. A step whose loss or
gradients are not finite leaves the state unchanged (inside the jitted step) and is counted;
`train.max_nonfinite_steps` such steps in a row stop the run with `hooks.NonFiniteError`. No
checkpoint is ever written from a non-finite state.

Accounting: metrics are means over each log interval; `data_wait_frac` is the time the host blocked
on the input iterator (next() plus the host-to-device copy); goodput splits wall time into init,
compile (first step), data, step, checkpoint (and val); MFU uses the family's analytic FLOPs.
"""

import os
import signal
import threading
import time

import jax
from absl import logging

from sleepjax import sharding
from sleepjax.data import pipeline, prefetch
from sleepjax.data.manifest import read_manifest, training_modalities
from sleepjax.train import checkpoint, gradcache, hooks as hooks_lib, metrics, optim
from sleepjax.train import state as state_lib
from sleepjax.train.step import ema_initial_weight, make_train_step


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
  names = training_modalities(manifest, config.data.modalities)
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


def batches(config, manifest, modalities, mesh, pair_share=None) -> prefetch.DevicePrefetch:
  """The training batches, read and copied to the devices in a background thread while the step
  runs. `pair_share`: see `pipeline.make_dataset` (`sleepjax adapt`)."""
  batch_sh = sharding.batch_sharding(mesh)
  return prefetch.DevicePrefetch(iter(pipeline.make_dataset(
      manifest, "train", list(modalities), window=config.data.window_epochs,
      local_batch=check_batch(config.data.global_batch, mesh), seed=config.seed, train=True,
      sampling=config.data.modality_sampling, pair_weights=dict(config.data.pair_weights) or None,
      modality_dropout=config.data.modality_dropout, min_modalities=config.data.min_modalities,
      caption_len=config.data.caption_len,
      process_index=jax.process_index(), process_count=jax.process_count(),
      read_threads=config.data.read_threads, prefetch=config.data.prefetch,
      workers=config.data.workers, verify=config.data.verify_shards,
      subject_fraction=config.data.subject_fraction, fields=_fields(config),
      pair_share=pair_share, pair_keys=config.data.pair_keys, gain=config.data.gain_augment)),
      lambda local: pipeline.to_global(local, batch_sh),
      depth=config.data.device_prefetch)


def _restore_or_init(config, ckpt: str, manager, it, modalities, mesh):
  """(state, graphdef, state shardings, tx, schedule, segments, saved meta) of the newest checkpoint
  that restores (or `train.resume_step`), state and iterator position, else a fresh state."""

  def resume(step: int):
    """One checkpoint: refuses a meaning-changing resume, then state, then iterator position."""
    segments, meta = _resume_plan(config, ckpt, step)
    tx, _ = optim.make_optimizer(config.optim, segments)
    _, abstract, _ = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
    return segments, meta, checkpoint.restore(manager, step, abstract, it)

  found = checkpoint.restore_newest(ckpt, resume, config.train.resume_step or None,
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
  logging.info("model: %.2fM parameters, mesh %s", state_lib.count_params(abstract.params) / 1e6,
               dict(mesh.shape))
  _warn_short_ema(config)
  if len(segments) > 1:
    logging.info("learning-rate schedule segments %s (decay continues, see train/optim.py)", segments)
  if state is None:
    state = state_lib.init_state(config, modalities, tx, state_sh, config.seed)
  return state, graphdef, state_sh, tx, schedule, segments, meta


def _warn_short_ema(config):
  ema_base = config.train.ema_momentum
  left = ema_initial_weight(config.train.steps, ema_base) if ema_base else 0.0
  if left > 0.01:
    logging.warning("train.ema_momentum=%s over %d steps: the EMA parameters (used by eval) keep "
                    "%.0f %% of the random init; lower it for a run this short", ema_base,
                    config.train.steps, 100 * left)


def _hooks(config, workdir, manifest, modalities, mesh, manager, it, writer, chrono, step, segments,
           meta) -> list[hooks_lib.Hook]:
  """The hooks in the order they run after each step (train/hooks.py); the metric logger last."""
  train_cfg = config.train
  means = metrics.IntervalMeans()
  guard = hooks_lib.NonFiniteGuard(
      train_cfg.max_nonfinite_steps, int(meta.get("skipped_total", 0)), chrono, means.add,
      due=lambda s: s % train_cfg.log_every == 0 or manager.should_save(s),
      last_checkpoint=lambda: f"step {manager.latest_step()} in {checkpoint_dir(workdir)}")
  # The data split the run trained on: eval refuses a re-prepared cohort whose splits moved.
  run_meta = lambda: {"schedule": segments, "skipped_total": guard.skipped_total,
                      "split_hash": manifest.get("split_hash")}
  out = [guard,
         hooks_lib.Profiler(step + 3, train_cfg.profile_steps,
                            os.path.join(train_dir(workdir), "tb")),
         hooks_lib.Checkpointer(manager, it, config, run_meta, chrono)]
  if train_cfg.val_every:
    out.append(hooks_lib.ValLoss(config, manifest, modalities, mesh, every=train_cfg.val_every,
                                 batches=train_cfg.val_batches, writer=writer, chrono=chrono))
  out.append(hooks_lib.MetricLogger(
      writer, chrono, means, lambda: guard.skipped_total, every=train_cfg.log_every,
      global_batch=config.data.global_batch, window=config.data.window_epochs,
      flops=_flops_per_step(config, modalities)))
  return out


def train(config, workdir: str) -> dict:
  """Trains up to config.train.steps steps; returns the last logged metrics (with `preempted`
  set to 1.0 when a signal stopped the run early)."""
  t_start = time.perf_counter()
  mesh, manifest, modalities, _, _ = setup(config, workdir)
  gradcache.check_microbatches(config.data.global_batch, mesh.shape["data"] * mesh.shape["fsdp"],
                               config.train.microbatches)
  config = config.copy_and_resolve_references()  # the checkpoint's config names what is encoded
  with config.unlocked():
    config.data.modalities = tuple(modalities)
  it = batches(config, manifest, modalities, mesh)
  ckpt = checkpoint_dir(workdir)
  manager = checkpoint.make_manager(ckpt, config)
  state, graphdef, state_sh, tx, schedule, segments, meta = _restore_or_init(
      config, ckpt, manager, it, modalities, mesh)
  step_fn = jax.jit(make_train_step(graphdef, tx, schedule, config),
                    in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  writer = metrics.create_writer(os.path.join(train_dir(workdir), "tb"))
  step = int(state.step)
  if step == 0:
    writer.write_hparams({"params": state_lib.count_params(state.params),
                          **{k: str(v) for k, v in config.model.items()}})
  # A time-limited job that requeues runs a chunk of the schedule per job; the schedule itself
  # always spans train.steps (extended as in train/optim.py).
  stop = config.train.steps
  if config.train.stop_after_steps:
    stop = min(stop, step + config.train.stop_after_steps)
  chrono = hooks_lib.Chrono(t_start, step, val=bool(config.train.val_every))
  hooks = _hooks(config, workdir, manifest, modalities, mesh, manager, it, writer, chrono, step,
                 segments, meta)
  preempt = Preemption()
  try:
    with preempt, jax.set_mesh(mesh):
      while step < stop:
        batch = chrono.next_batch(it)
        state, step_metrics = chrono.run_step(step_fn, state, batch)
        step += 1
        stopping = step == stop or preempt.should_stop(step)
        info = hooks_lib.StepInfo(step, state, step_metrics, stopping)
        for hook in hooks:
          hook(info)
        if stopping:
          break
  finally:
    it.close()
    for hook in hooks:
      hook.close()
  last = hooks[-1].last  # the metric logger's
  if preempt.requested:
    msg = (f"train: {preempt.signal_name} at step {step}: checkpoint saved in {ckpt}; "
           "run the same command to resume")
    logging.warning(msg)
    print(msg, flush=True)
    last["preempted"] = 1.0
  return last
