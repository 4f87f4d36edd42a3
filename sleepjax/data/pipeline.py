"""Grain pipeline: ArrayRecord segments -> decoded windows -> local batches -> global jax.Arrays.

source -> per-process slice -> seeded shuffle -> repeat -> decode -> window crop -> batch -> prefetch.
"""

import dataclasses

import grain
import jax
import numpy as np

from sleepjax import records
from sleepjax.data.manifest import shard_paths


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Record bytes -> flat dict of numpy arrays the model and objectives consume."""
  modalities: tuple[str, ...]
  sites: tuple[str, ...]

  def map(self, record: bytes) -> dict:
    arrays, meta = records.decode(record)
    missing = [m for m in self.modalities if f"sig/{m}" not in arrays]
    if missing:
      raise ValueError(f"record {meta['recording_id']}@{meta['first_epoch']} lacks {missing}")
    out = {f"signals/{m}": arrays[f"sig/{m}"] for m in self.modalities}
    out.update({f"masks/{m}": arrays[f"mask/{m}"] for m in self.modalities})
    out["stage"], out["events"] = arrays["stage"], arrays["events"]
    out["age"] = np.float32(np.nan if meta["age"] is None else meta["age"])
    out["sex"] = np.int32(-1 if meta["sex"] is None else meta["sex"])
    out["site"] = np.int32(self.sites.index(meta["site"]))
    return out


@dataclasses.dataclass(frozen=True)
class CropWindow(grain.transforms.RandomMap):
  """Random window of W consecutive epochs out of a segment of E (per-epoch arrays only)."""
  window: int

  def random_map(self, x: dict, rng: np.random.Generator) -> dict:
    segment = len(x["stage"])
    start = int(rng.integers(0, segment - self.window + 1))
    return {k: v[start:start + self.window] if np.ndim(v) else v for k, v in x.items()}


def make_dataset(manifest: dict, split: str, modalities: list[str], *, window: int | None,
                 local_batch: int, seed: int, train: bool, process_index: int = 0,
                 process_count: int = 1, read_threads: int = 2, prefetch: int = 4) -> grain.IterDataset:
  """Batches of `local_batch` records for this process.

  train: shuffled, repeated forever, random windows of `window` epochs, drop the last partial batch.
  Otherwise one ordered pass over whole segments, keeping the last partial batch.
  """
  source = grain.sources.ArrayRecordDataSource(shard_paths(manifest, split))
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if train:
    # Different seeds per process: disjoint slices, independent orders.
    ds = ds.shuffle(seed=seed + 7919 * process_index).repeat()
  ds = ds.map(Decode(tuple(modalities), tuple(manifest["sites"])))
  if train and window is not None:
    ds = ds.random_map(CropWindow(window), seed=seed + process_index)
  ds = ds.batch(local_batch, drop_remainder=train)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=prefetch))


def nest(flat: dict) -> dict:
  """{"signals/eeg": a, "stage": b} -> {"signals": {"eeg": a}, "stage": b}."""
  out = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def to_global(local: dict, sharding: jax.sharding.NamedSharding) -> dict:
  """Process-local numpy batch -> global jax.Arrays split over the batch axes."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), nest(local))
