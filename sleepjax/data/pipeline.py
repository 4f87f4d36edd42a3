"""Grain pipeline: ArrayRecord segments -> decoded windows -> local batches -> global jax.Arrays.

record indices (per-process slice + seeded shuffle + repeat, or pair-first draws) -> read + decode
-> modality masking -> window crop -> batch -> prefetch.
"""

import dataclasses
import functools
import os

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
  caption_groups: tuple[str, ...] = ()  # keep these captions (object array [E, G]) for tokenising

  def map(self, record: bytes) -> dict:
    arrays, meta = records.decode(record)
    missing = [m for m in self.modalities if f"sig/{m}" not in arrays]
    if missing:
      raise ValueError(f"record {meta['recording_id']}@{meta['first_epoch']} lacks {missing}")
    out = {f"signals/{m}": arrays[f"sig/{m}"] for m in self.modalities}
    out.update({f"masks/{m}": arrays[f"mask/{m}"] for m in self.modalities})
    out["stage"], out["events"], out["features"] = arrays["stage"], arrays["events"], arrays["features"]
    out["age"] = np.float32(np.nan if meta["age"] is None else meta["age"])
    out["sex"] = np.int32(-1 if meta["sex"] is None else meta["sex"])
    out["site"] = np.int32(self.site_index[meta["site"]])
    out["recording"] = np.int32(self.recording_index[meta["recording_id"]])
    out["epoch_index"] = meta["first_epoch"] + np.arange(len(arrays["stage"]), dtype=np.int32)
    if self.caption_groups:
      out["captions"] = np.array([meta["captions"][g] for g in self.caption_groups], object).T
    return out


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
  from sleepjax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer(path)


@dataclasses.dataclass(frozen=True)
class TokenizeCaptions(grain.transforms.Map):
  """Captions [W, G] strings -> `captions` int32 [W, G, L] token ids (0 = pad, BOS/EOS added,
  truncated to L) and `caption_mask` bool [W, G, L]. The tokenizer loads once per worker."""
  tokenizer_path: str
  max_len: int

  def map(self, x: dict) -> dict:
    texts_WxG = x.pop("captions")
    ids, mask = _load_tokenizer(self.tokenizer_path).encode(list(texts_WxG.reshape(-1)), self.max_len)
    x["captions"] = ids.reshape(*texts_WxG.shape, self.max_len)
    x["caption_mask"] = mask.reshape(*texts_WxG.shape, self.max_len)
    return x


@dataclasses.dataclass(frozen=True)
class CropWindow(grain.transforms.RandomMap):
  """Random window of W consecutive epochs out of a segment of E (per-epoch arrays only)."""
  window: int

  def random_map(self, x: dict, rng: np.random.Generator) -> dict:
    segment = len(x["stage"])
    start = int(rng.integers(0, segment - self.window + 1))
    return {k: v[start:start + self.window] if np.ndim(v) else v for k, v in x.items()}


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class EpochShuffle(grain.transforms.MapWithIndex):
  """Global example index -> record index: a fresh seeded permutation of `index` every epoch.

  Grain's index_shuffle costs ~0.4 ms per element on small datasets (a few hundred records per
  process); one cached numpy permutation per epoch costs nothing per element at any size.
  """
  index: np.ndarray
  seed: int

  def map_with_index(self, i: int, _) -> int:
    epoch, j = divmod(i, len(self.index))
    return int(self.index[_permutation(self.seed, epoch, len(self.index))[j]])


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
                 caption_len: int = 0, read_threads: int = 2, prefetch: int = 4,
                 workers: int = 0, verify: str = "stamp") -> grain.IterDataset:
  """Batches of `local_batch` records for this process.

  train: seeded shuffle of this process's slice (or pair-first draws), repeated forever, random
  windows of `window` epochs, the last partial batch dropped. Otherwise one ordered pass over
  whole segments keeping the last partial batch. `sampling`: see `sleepjax.data.sampling`;
  `verify`: see `manifest.verify_shards`. `caption_len` > 0 adds the epochs' captions of every
  group, tokenised with the manifest's tokenizer (`sleepjax tokenizer`). `workers` > 0 moves reading and decoding into that many
  worker processes (grain mp_prefetch); threads and workers: see BENCHMARKS.md.
  """
  verify_shards(manifest, split, verify, process_index, process_count)
  source = grain.sources.ArrayRecordDataSource(shard_paths(manifest, split))
  groups = ()
  if caption_len:
    if "tokenizer" not in manifest:
      raise ValueError(f"{manifest['dir']}: captions requested but the manifest names no "
                       "tokenizer; run `sleepjax tokenizer` first")
    groups = tuple(manifest["caption_groups"])
  read = Read(source, Decode(tuple(modalities), {s: i for i, s in enumerate(manifest["sites"])},
                             {r: i for i, r in enumerate(sorted(manifest["recordings"]))}, groups))
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
    index = index[process_index::process_count]
    if train:
      # Disjoint slices per process, each in its own seeded order, a new order every epoch.
      ds = grain.MapDataset.range(len(index)).repeat().map_with_index(
          EpochShuffle(index, seed + 7919 * process_index))
    else:
      ds = grain.MapDataset.source(index)
    ds = ds.map(read)
    if train and sampling == "dropout":
      ds = ds.random_map(sampling_lib.ModalityDropout(tuple(modalities), modality_dropout,
                                                      min_modalities), seed=seed + process_index)
  if train and window is not None:
    ds = ds.random_map(CropWindow(window), seed=seed + process_index)
  if caption_len:
    ds = ds.map(TokenizeCaptions(os.path.join(manifest["dir"], manifest["tokenizer"]["path"]),
                                 caption_len))
  ds = ds.batch(local_batch, drop_remainder=train)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


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
