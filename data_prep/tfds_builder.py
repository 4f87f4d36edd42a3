"""A TFDS dataset builder over the prepared shards (ArrayRecord, readable with no TensorFlow).

  builder = SleepSegments(source_dir="runs/demo/data", data_dir="runs/demo/tfds")
  builder.download_and_prepare(file_format="array_record")
  ds = builder.as_data_source(split="train")   # or tfds.data_source("sleep_segments", ...)

Each example is one segment: nested `signals`/`masks` per modality, `stage`, `events` and the
recording's metadata, shapes taken from the manifest. `sleepjax bench read` compares this read
path with the native one (`sleepjax.records`); the native one is the pipeline default because it
decodes faster (numbers in BENCHMARKS.md).
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from sleepjax import records
from sleepjax.data.manifest import read_manifest, shard_paths
from data_prep.writer import read_records


class SleepSegments(tfds.core.GeneratorBasedBuilder):
  """Segments of E 30-s epochs of canonical PSG modalities."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir: str | os.PathLike, **kwargs):
    self._manifest = read_manifest(source_dir)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    m, e = self._manifest, self._manifest["segment_epochs"]
    tensor = lambda shape, dtype: tfds.features.Tensor(shape=shape, dtype=dtype)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            "signals": {k: tensor((e, len(v["channels"]), v["rate"] * m["epoch_seconds"]),
                                  np.float16) for k, v in m["modalities"].items()},
            "masks": {k: tensor((e, len(v["channels"])), np.bool_)
                      for k, v in m["modalities"].items()},
            "stage": tensor((e,), np.int8),
            "events": tensor((e, m["epoch_seconds"]), np.uint8),
            "recording_id": tfds.features.Text(), "site": tfds.features.Text(),
            "first_epoch": tensor((), np.int32), "age": tensor((), np.float32),
            "sex": tensor((), np.int32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split, v in self._manifest["splits"].items()
            if v["records"]}

  def _generate_examples(self, split):
    for path in shard_paths(self._manifest, split):
      for blob in read_records(path):
        arrays, meta = records.decode(blob)
        yield f"{meta['recording_id']}@{meta['first_epoch']}", {
            "signals": {k: arrays[f"sig/{k}"] for k in self._manifest["modalities"]},
            "masks": {k: arrays[f"mask/{k}"] for k in self._manifest["modalities"]},
            "stage": arrays["stage"], "events": arrays["events"],
            "recording_id": meta["recording_id"], "site": meta["site"],
            "first_epoch": meta["first_epoch"],
            "age": np.nan if meta["age"] is None else meta["age"],
            "sex": -1 if meta["sex"] is None else meta["sex"],
        }
