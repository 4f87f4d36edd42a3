"""clu metric writers: log lines everywhere, TensorBoard event files on process 0.

clu's own SummaryWriter needs TensorFlow; this MetricWriter writes the same event files with the
`tensorboard` package alone.
"""

import importlib.util
import os
import sys
import time
import types

import jax
import numpy as np


def _without_tensorflow():
  """clu.metric_writers imports TensorFlow at package import, only for its SummaryWriter. Where TF is
  absent, stand in an empty module for that one submodule so the rest of clu's writers import."""
  name = "clu.metric_writers.summary_writer"
  if importlib.util.find_spec("tensorflow") is None and name not in sys.modules:
    shim = types.ModuleType(name)
    shim.SummaryWriter = None  # use TensorBoardWriter below
    sys.modules[name] = shim


_without_tensorflow()
from clu import metric_writers  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class TensorBoardWriter(metric_writers.MetricWriter):
  """Scalars and text to TensorBoard event files."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self._writer = EventFileWriter(logdir)

  def _add(self, step: int, values: list[summary_pb2.Summary.Value]):
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

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

  def write_images(self, step, images):
    del step, images  # not used by sleepjax

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_writer(logdir: str) -> metric_writers.MetricWriter:
  if jax.process_index() != 0:
    return metric_writers.LoggingWriter()
  return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(), TensorBoardWriter(logdir)])
