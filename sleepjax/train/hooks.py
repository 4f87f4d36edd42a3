"""What runs around the jitted step, one concern per hook (big_vision / Levanter style).

A hook is called after every step with a `StepInfo` and closed once when the loop ends (also on an
error). The trainer calls them in this order: the non-finite guard first (nothing is saved or
logged before the step's finiteness is known), then the profiler window, checkpointing, the
validation loss and the logged metrics. `Chrono` keeps the wall-time accounting they share.
"""

import contextlib
import os
import time
from typing import Any, Callable, NamedTuple

import jax
from absl import logging
from flax import nnx

from sleepjax import sharding
from sleepjax.data import pipeline
from sleepjax.families import get_family
from sleepjax.train import checkpoint, metrics, state as state_lib


class NonFiniteError(ValueError):
  """Too many consecutive steps with a non-finite loss or gradients (a ValueError, so the CLI
  reports it in one line)."""


class StepInfo(NamedTuple):
  step: int  # steps done
  state: Any  # the TrainState after the step
  metrics: dict  # the step's metrics, still on the device
  stopping: bool  # the last step of this run (schedule end, stop_after_steps or a signal)


class Hook:
  """The interface: called after each step, closed once at the end."""

  def __call__(self, info: StepInfo) -> None:
    raise NotImplementedError

  def close(self) -> None:
    pass


class Chrono:
  """Wall time since the start, split into kinds (goodput: init, compile, data, step, checkpoint,
  val), and the throughput interval between two logs (steps, seconds, data wait, tokens)."""

  def __init__(self, t_start: float, step: int, val: bool = False):
    self.t_start = t_start
    self.seconds = {"init": time.perf_counter() - t_start, "compile": 0.0, "data": 0.0,
                    "step": 0.0, "checkpoint": 0.0, **({"val": 0.0} if val else {})}
    self._compiled = False
    self.start_interval(step)

  @contextlib.contextmanager
  def timing(self, kind: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[kind] += time.perf_counter() - t0

  def next_batch(self, it) -> dict:
    """next(it), timed as data wait (blocks only when input is slower than the step)."""
    t0 = time.perf_counter()
    batch = next(it)
    dt = time.perf_counter() - t0
    self.seconds["data"] += dt
    self._data += dt
    self._tokens += sum(x.shape[0] * x.shape[1] for x in batch["signals"].values())
    return batch

  def run_step(self, step_fn, state, batch):
    """step_fn(state, batch); the first call (compilation) is timed apart from the steady state."""
    t0 = time.perf_counter()
    out = step_fn(state, batch)
    if not self._compiled:
      jax.block_until_ready(out[1])
      self._compiled = True
      self.seconds["compile"] += time.perf_counter() - t0
    else:
      self.seconds["step"] += time.perf_counter() - t0
    return out

  def start_interval(self, step: int):
    self._t, self._step, self._data, self._tokens = time.perf_counter(), step, 0.0, 0

  def interval(self, step: int) -> tuple[int, float, float, int]:
    """(steps, seconds, data-wait seconds, tokens) since `start_interval`."""
    return step - self._step, time.perf_counter() - self._t, self._data, self._tokens

  def goodput(self) -> dict:
    wall = time.perf_counter() - self.t_start
    return {f"goodput/{k}": v / wall for k, v in self.seconds.items()}


class NonFiniteGuard(Hook):
  """Fetches each step's metrics one step late (the host runs a step ahead of the device) and
  counts skipped updates; `max_bad` in a row raise `NonFiniteError`. Steps where `due(step)` (a
  log or a save) or the last step are fetched at once. Finite metrics go to `on_finite`."""

  def __init__(self, max_bad: int, skipped_total: int, chrono: Chrono,
               on_finite: Callable[[dict], None], due: Callable[[int], bool],
               last_checkpoint: Callable[[], str]):
    self.max_bad, self.skipped_total, self.chrono = max_bad, skipped_total, chrono
    self.on_finite, self.due, self.last_checkpoint = on_finite, due, last_checkpoint
    self.bad_in_a_row, self._pending = 0, None

  def __call__(self, info: StepInfo):
    self.settle()
    self._pending = (info.step, info.metrics)
    if info.stopping or self.due(info.step):
      self.settle()

  def settle(self):
    if self._pending is None:
      return
    (at, m), self._pending = self._pending, None
    with self.chrono.timing("step"):  # blocks on the device
      host = jax.device_get(m)
    if host.pop("skipped") == 0:
      self.bad_in_a_row = 0
      self.on_finite(host)
      return
    self.bad_in_a_row += 1
    self.skipped_total += 1
    logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)", at,
                    self.bad_in_a_row)
    if self.bad_in_a_row >= self.max_bad:
      raise NonFiniteError(
          f"{self.bad_in_a_row} steps in a row (up to step {at}) had a non-finite loss or "
          f"gradients (train.max_nonfinite_steps={self.max_bad}); last checkpoint: "
          f"{self.last_checkpoint()}")


class Profiler(Hook):
  """Traces steps start+1 .. start+steps (`train.profile_steps`) into `logdir`."""

  def __init__(self, start: int, steps: int, logdir: str):
    self.start, self.steps, self.logdir = start, steps, logdir
    self.tracing = False

  def __call__(self, info: StepInfo):
    if self.steps and info.step == self.start:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.tracing = True
    elif self.tracing and info.step == self.start + self.steps:
      jax.block_until_ready(info.metrics)
      self.close()
      logging.info("profile of steps %d-%d written under %s", self.start + 1, info.step,
                   os.path.join(self.logdir, "plugins", "profile"))

  def close(self):
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


class Checkpointer(Hook):
  """Saves state + iterator + config + `meta()` at the manager's interval and on the last step;
  closing waits for the asynchronous saves."""

  def __init__(self, manager, data_iter, config, meta: Callable[[], dict], chrono: Chrono):
    self.manager, self.data_iter, self.config, self.meta = manager, data_iter, config, meta
    self.chrono = chrono

  def __call__(self, info: StepInfo):
    with self.chrono.timing("checkpoint"):
      checkpoint.save(self.manager, info.step, info.state, self.data_iter, self.config,
                      meta=self.meta(), force=info.stopping)

  def close(self):
    with self.chrono.timing("checkpoint"):
      self.manager.wait_until_finished()
      self.manager.close()


def eval_graphdef(config, modalities, seed: int):
  """The model's graph in evaluation mode: the same parameters, dropout off. (sleep2vec's dropout
  acts wherever the loss passes an rng, which also draws its mask tokens, so the family's loss
  turns it off only through the model's rates.)"""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key in ("dropout", "attention_dropout"):
      if key in config.model:
        config.model[key] = 0.0
  return nnx.graphdef(nnx.eval_shape(lambda: state_lib.build_model(config, modalities, seed)))


def val_split(manifest: dict, config) -> str:
  """The validation split, or `eval.test_split` where the cohort has no validation records."""
  return "val" if manifest["splits"].get("val", {}).get("records") else config.eval.test_split


class ValLoss(Hook):
  """`val_loss` every `every` steps: the family's loss in evaluation mode (`eval_graphdef`) on
  the first `batches` batches of the validation split (fixed crops, seed 0) with keys 0, 1, ...,
  so every evaluation sees the same windows and draws. `evaluate(params)` is usable alone."""

  def __init__(self, config, manifest, modalities, mesh, *, every: int, batches: int,
               writer=None, chrono: Chrono | None = None):
    self.every, self.batches, self.writer, self.chrono = every, batches, writer, chrono
    self.split = val_split(manifest, config)
    self._dataset = pipeline.make_dataset(
        manifest, self.split, list(modalities), window=config.data.window_epochs,
        local_batch=config.data.global_batch // jax.process_count(), seed=0, train=True,
        sampling="all", caption_len=config.data.caption_len, process_index=jax.process_index(),
        process_count=jax.process_count(), read_threads=config.data.read_threads,
        verify=config.data.verify_shards)
    self._host_batches = None  # read on first use, kept on the host
    self._batch_sh = sharding.batch_sharding(mesh)
    family, graphdef = get_family(config), eval_graphdef(config, modalities, config.seed)
    self._loss = jax.jit(
        lambda p, b, rng: family.loss(nnx.merge(graphdef, state_lib.compute_params(p, config)),
                                      b, rng)[0],
        out_shardings=sharding.replicated(mesh))

  def evaluate(self, params) -> float:
    if self._host_batches is None:
      it = iter(self._dataset)
      self._host_batches = [next(it) for _ in range(self.batches)]
    losses = [self._loss(params, pipeline.to_global(b, self._batch_sh), jax.random.key(i))
              for i, b in enumerate(self._host_batches)]
    return float(sum(float(x) for x in losses) / len(losses))

  def __call__(self, info: StepInfo):
    if info.step % self.every:
      return
    with self.chrono.timing("val"):
      value = self.evaluate(info.state.params)
    self.writer.write_scalars(info.step, {"val_loss": value})


class MetricLogger(Hook):
  """Every `every` steps and on the last one: the interval's mean metrics, throughput, MFU and
  goodput, written to `writer`; `last` holds what was written last."""

  def __init__(self, writer, chrono: Chrono, means: metrics.IntervalMeans,
               skipped_total: Callable[[], int], *, every: int, global_batch: int, window: int,
               flops: float | None):
    self.writer, self.chrono, self.means, self.skipped_total = writer, chrono, means, skipped_total
    self.every, self.global_batch, self.window, self.flops = every, global_batch, window, flops
    self.last = {}

  def __call__(self, info: StepInfo):
    if info.step % self.every and not info.stopping:
      return
    n, dt, data_s, tokens = self.chrono.interval(info.step)
    last = self.means.pop()
    last.update({
        "steps_per_s": n / dt, "examples_per_s": n * self.global_batch / dt,
        "sleep_epochs_per_s": n * self.global_batch * self.window / dt,
        "tokens_per_s": tokens / dt, "data_wait_frac": data_s / dt,
        "skipped_total": self.skipped_total()})
    if self.flops:
      last["tflops_per_s_per_device"] = self.flops * n / dt / jax.device_count() / 1e12
      if (u := metrics.mfu(self.flops, dt / n)) is not None:
        last["mfu"] = u
    last.update(self.chrono.goodput())
    self.writer.write_scalars(info.step, last)
    self.last = last
    self.chrono.start_interval(info.step)

  def close(self):
    self.writer.flush()
