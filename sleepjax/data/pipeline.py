"""Grain pipeline: ArrayRecord segments -> decoded windows -> local batches -> global jax.Arrays.

record indices (per-process slice + seeded shuffle + repeat, or pair-first draws) -> read + decode
-> modality masking -> window crop -> batch -> prefetch.
"""

import dataclasses

import grain
import jax
import numpy as np

from sleepjax import records
from sleepjax.data import sampling as sampling_lib
from sleepjax.data.manifest import shard_paths, verify_shards


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Record bytes -> flat dict of numpy arrays the model and objectives consume."""
  modalities: tuple[str, ...]
  site_index: dict[str, int]
  recording_index: dict[str, int]

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
    out["site"] = np.int32(self.site_index[meta["site"]])
    out["recording"] = np.int32(self.recording_index[meta["recording_id"]])
    return out


@dataclasses.dataclass(frozen=True)
class CropWindow(grain.transforms.RandomMap):
  """Random window of W consecutive epochs out of a segment of E (per-epoch arrays only)."""
  window: int

  def random_map(self, x: dict, rng: np.random.Generator) -> dict:
    segment = len(x["stage"])
    start = int(rng.integers(0, segment - self.window + 1))
    return {k: v[start:start + self.window] if np.ndim(v) else v for k, v in x.items()}


@dataclasses.dataclass(frozen=True)
class Read(grain.transforms.Map):
  """Record index -> decoded record; (index, tag) pairs keep their tag."""
  source: grain.sources.ArrayRecordDataSource
  decode: Decode

  def map(self, item):
    if isinstance(item, tuple):
      return self.decode.map(self.source[item[0]]), item[1]
    return self.decode.map(self.source[int(item)])


def make_dataset(manifest: dict, split: str, modalities: list[str], *, local_batch: int, seed: int,
                 train: bool, window: int | None = None, sampling: str = "all",
                 pair_weights: dict | None = None, modality_dropout: float = 0.0,
                 min_modalities: int = 1, process_index: int = 0, process_count: int = 1,
                 read_threads: int = 2, prefetch: int = 4, verify: str = "stamp") -> grain.IterDataset:
  """Batches of `local_batch` records for this process.

  train: seeded shuffle of this process's slice (or pair-first draws), repeated forever, random
  windows of `window` epochs, the last partial batch dropped. Otherwise one ordered pass over
  whole segments keeping the last partial batch. `sampling`: see `sleepjax.data.sampling`;
  `verify`: see `manifest.verify_shards`.
  """
  verify_shards(manifest, split, verify, process_index, process_count)
  source = grain.sources.ArrayRecordDataSource(shard_paths(manifest, split))
  read = Read(source, Decode(tuple(modalities), {s: i for i, s in enumerate(manifest["sites"])},
                             {r: i for i, r in enumerate(sorted(manifest["recordings"]))}))
  presence_RxM = sampling_lib.record_presence(manifest, split, modalities)
  if len(presence_RxM) != len(source):
    raise ValueError(f"{manifest['dir']}: manifest lists {len(presence_RxM)} {split} records, "
                     f"shards hold {len(source)}")
  if train and sampling == "pair_first":
    pairs, probs, members = sampling_lib.pair_table(presence_RxM, modalities, pair_weights)
    ds = grain.MapDataset.range(len(source)).repeat().map_with_index(sampling_lib.PairFirstIndex(
        tuple(pairs), probs, tuple(members), local_batch * process_count, local_batch, seed,
        process_index))
    ds = ds.map(read).map(sampling_lib.KeepPair(tuple(modalities), tuple(pairs)))
  else:
    if sampling not in ("all", "all_present", "dropout", "pair_first"):
      raise ValueError(f"unknown data.modality_sampling {sampling!r}")
    index = np.arange(len(source))
    if train and sampling == "all_present":
      index = index[presence_RxM.all(1)]
      if not len(index):
        raise ValueError(f"all_present sampling: no {split} record has all of {modalities}")
    ds = grain.MapDataset.source(index)[process_index::process_count]
    if train:
      # Different seeds per process: disjoint slices, independent orders.
      ds = ds.shuffle(seed=seed + 7919 * process_index).repeat()
    ds = ds.map(read)
    if train and sampling == "dropout":
      ds = ds.random_map(sampling_lib.ModalityDropout(tuple(modalities), modality_dropout,
                                                      min_modalities), seed=seed + process_index)
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
