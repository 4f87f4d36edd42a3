"""Metric writers: log lines everywhere, TensorBoard event files on process 0.

A small writer of our own over the `tensorboard` package's event-file writer: clu's writers import
TensorFlow at package import, and standing in a fake module for it would break on a clu upgrade.
The interface is clu's (`write_scalars`, `write_texts`, `write_hparams`, `flush`, `close`), so a
clu MetricWriter can take its place.
"""

import os
import time

import jax
import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class LoggingWriter:
  """Scalars as one INFO log line per step (clu's LoggingWriter format)."""

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())))

  def write_texts(self, step, texts):
    logging.info("[%d] texts: %s", step, dict(texts))

  def write_hparams(self, hparams):
    logging.info("[Hyperparameters] %s", dict(hparams))

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def flush(self):
    pass

  def close(self):
    pass


class TensorBoardWriter(LoggingWriter):
  """Scalars and text to TensorBoard event files."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventFileWriter(logdir)

  def _add(self, step: int, values: list[summary_pb2.Summary.Value]):
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step, scalars):
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_texts(self, step, texts):
    from tensorboard.plugins.text import summary_v2  # pylint: disable=g-import-not-at-top
    for k, v in texts.items():
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step),
          summary=summary_pb2.Summary(value=[summary_v2.text_pb(k, np.asarray(v).astype(str)).value[0]])))

  def write_hparams(self, hparams):
    self.write_texts(0, {"hparams": "\n".join(f"{k}: {v}" for k, v in sorted(hparams.items()))})

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter(LoggingWriter):
  """Writes to each of `writers`."""

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_texts(self, step, texts):
    for w in self._writers:
      w.write_texts(step, texts)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_writer(logdir: str) -> LoggingWriter:
  """Log lines on every process; plus event files in `logdir` on process 0 (written by the event
  file writer's own background thread, so a write never waits on the disk)."""
  if jax.process_index() != 0:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), TensorBoardWriter(logdir)])


# Dense bf16 peak TFLOP/s per chip (vendor figures, no sparsity), matched against device_kind.
PEAK_TFLOPS = (("h100", 989.0), ("h200", 989.0), ("gh200", 989.0), ("a100", 312.0),
               ("v4", 275.0), ("v5 lite", 197.0), ("v5e", 197.0), ("v5p", 459.0), ("v5", 459.0),
               ("v6 lite", 918.0), ("v6e", 918.0))


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of one device of this kind; None where unknown (CPUs, other chips)."""
  kind = device_kind.lower()
  for key, tflops in sorted(PEAK_TFLOPS, key=lambda kv: -len(kv[0])):
    if key in kind:
      return tflops * 1e12
  return None


def mfu(flops_per_step: float | None, step_seconds: float, devices=None) -> float | None:
  """Model FLOPs utilisation: analytic FLOPs per step over the devices' peak, or None."""
  devices = jax.devices() if devices is None else devices
  peak = peak_flops(devices[0].device_kind)
  if not flops_per_step or peak is None or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / (peak * len(devices))


class IntervalMeans:
  """Host-side running means of per-step scalar metrics over one log interval."""

  def __init__(self):
    self.sums, self.counts = {}, {}

  def add(self, values: dict, weight: float = 1.0):
    for k, v in values.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
      self.counts[k] = self.counts.get(k, 0.0) + weight

  def pop(self) -> dict:
    out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
    self.sums, self.counts = {}, {}
    return out
