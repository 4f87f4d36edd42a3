"""Grain pipeline: ArrayRecord segments -> local batches of windows -> global jax.Arrays.

record indices (per-process slice + a seeded order per epoch, or pair-first draws) -> batches of
indices -> one read + decode + window crop + modality masking + caption tokenisation per batch
-> prefetch (threads, optionally worker processes).

Work happens per batch, not per record: Python overhead is paid once per batch and every byte is
copied once, from the zero-copy decoded record straight into its place in the batch.
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

SAMPLINGS = ("all", "all_present", "pair_first", "dropout")


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


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  return CaptionTokenizer(path)


@dataclasses.dataclass(frozen=True)
class ReadBatch(grain.transforms.RandomMap):
  """Record indices [B] (and, pair-first, pair ids [B]) -> one batch of flat numpy arrays.

  Keys: signals/<m> [B, W, C, S], masks/<m> [B, W, C], stage [B, W], events [B, W, 30],
  features [B, W, F], epoch_index [B, W], age/sex/site/recording [B]; with captions,
  captions [B, W, G, L] token ids and caption_mask. W = `window` (random crop) or the segment.
  """
  source: grain.sources.ArrayRecordDataSource
  modalities: tuple[str, ...]
  site_index: dict[str, int]
  recording_index: dict[str, int]
  window: int | None = None
  pairs: tuple = ()  # pair-first: (a, b) modality indices per pair id
  dropout: float = 0.0
  min_modalities: int = 1
  caption_groups: tuple[str, ...] = ()
  tokenizer_path: str = ""
  caption_len: int = 0

  def random_map(self, batch, rng: np.random.Generator) -> dict:
    index_B, pair_B = batch if isinstance(batch, tuple) else (batch, None)
    decoded = [records.decode(self.source[int(i)]) for i in index_B]
    B, E = len(decoded), len(decoded[0][0]["stage"])
    W = self.window or E
    start_B = rng.integers(0, E - W + 1, B) if self.window else np.zeros(B, int)
    out = {}
    per_epoch = [(f"signals/{m}", f"sig/{m}") for m in self.modalities]
    per_epoch += [(f"masks/{m}", f"mask/{m}") for m in self.modalities]
    per_epoch += [("stage", "stage"), ("events", "events"), ("features", "features")]
    for key, name in per_epoch:
      first = decoded[0][0].get(name)
      if first is None:
        raise ValueError(f"records lack {name!r} (prepared for other modalities?)")
      x = out[key] = np.empty((B, W, *first.shape[1:]), first.dtype)
      for b, (arrays, _) in enumerate(decoded):
        x[b] = arrays[name][start_B[b]:start_B[b] + W]
    metas = [meta for _, meta in decoded]
    out["epoch_index"] = (np.array([m["first_epoch"] for m in metas], np.int32)[:, None]
                          + start_B[:, None] + np.arange(W, dtype=np.int32))
    out["age"] = np.array([np.nan if m["age"] is None else m["age"] for m in metas], np.float32)
    out["sex"] = np.array([-1 if m["sex"] is None else m["sex"] for m in metas], np.int32)
    out["site"] = np.array([self.site_index[m["site"]] for m in metas], np.int32)
    out["recording"] = np.array([self.recording_index[m["recording_id"]] for m in metas], np.int32)
    if pair_B is not None:  # pair-first: the batch trains one pair; mask every other modality
      keep = {self.modalities[i] for i in self.pairs[int(pair_B[0])]}
      for m in self.modalities:
        if m not in keep:
          out[f"masks/{m}"][:] = False
    elif self.dropout:
      sampling_lib.drop_modalities(out, self.modalities, self.dropout, self.min_modalities, rng)
    if self.caption_len:
      texts = [[records.texts(arrays["captions"])[g][s:s + W] for g in self.caption_groups]
               for (arrays, _), s in zip(decoded, start_B)]
      # [B][G][W] -> flat in (B, W, G) order
      flat = [text for per_record in texts for per_epoch in zip(*per_record) for text in per_epoch]
      ids, mask = _load_tokenizer(self.tokenizer_path).encode(flat, self.caption_len)
      shape = (B, W, len(self.caption_groups), self.caption_len)
      out["captions"], out["caption_mask"] = ids.reshape(shape), mask.reshape(shape)
    return out


def make_dataset(manifest: dict, split: str, modalities: list[str], *, local_batch: int, seed: int,
                 train: bool, window: int | None = None, sampling: str = "all",
                 pair_weights: dict | None = None, modality_dropout: float = 0.0,
                 min_modalities: int = 1, process_index: int = 0, process_count: int = 1,
                 caption_len: int = 0, read_threads: int = 2, prefetch: int = 4,
                 workers: int = 0, verify: str = "stamp",
                 subject_fraction: float = 1.0) -> grain.IterDataset:
  """Batches of `local_batch` records for this process.

  train: this process's slice in a new seeded order every epoch (or pair-first draws), repeated
  forever, random windows of `window` epochs, the last partial batch dropped. Otherwise one
  ordered pass over whole segments keeping the last partial batch. `sampling`: see
  `sleepjax.data.sampling`; `verify`: see `manifest.verify_shards`; `caption_len` > 0 adds the
  epochs' captions of every group, tokenised with the manifest's tokenizer (`sleepjax tokenizer`);
  `workers` > 0 moves reading and decoding into worker processes (see BENCHMARKS.md);
  `subject_fraction` < 1 keeps a fixed subset of the split's subjects (`sampling.subject_subset`).
  """
  if sampling not in SAMPLINGS:
    raise ValueError(f"unknown data.modality_sampling {sampling!r}; choose from {SAMPLINGS}")
  verify_shards(manifest, split, verify, process_index, process_count)
  source = grain.sources.ArrayRecordDataSource(shard_paths(manifest, split))
  presence_RxM = sampling_lib.record_presence(manifest, split, modalities)
  if len(presence_RxM) != len(source):
    raise ValueError(f"{manifest['dir']}: manifest lists {len(presence_RxM)} {split} records, "
                     f"shards hold {len(source)}")
  read = dict(source=source, modalities=tuple(modalities),
              site_index={s: i for i, s in enumerate(manifest["sites"])},
              recording_index={r: i for i, r in enumerate(sorted(manifest["recordings"]))},
              window=window if train else None)
  if caption_len:
    if "tokenizer" not in manifest:
      raise ValueError(f"{manifest['dir']}: captions requested but the manifest names no "
                       "tokenizer; run `sleepjax tokenizer` first")
    read.update(caption_groups=tuple(manifest["caption_groups"]), caption_len=caption_len,
                tokenizer_path=os.path.join(manifest["dir"], manifest["tokenizer"]["path"]))

  keep_R = (sampling_lib.subject_subset(manifest, split, subject_fraction)
            if subject_fraction < 1 else np.ones(len(presence_RxM), bool))
  if train and sampling == "pair_first":
    pairs, probs, members = sampling_lib.pair_table(presence_RxM & keep_R[:, None], modalities,
                                                    pair_weights)
    ds = grain.MapDataset.range(len(source)).repeat().map_with_index(sampling_lib.PairFirstIndex(
        tuple(pairs), probs, tuple(members), local_batch, seed, process_index))
    read["pairs"] = tuple(pairs)
  else:
    index = np.flatnonzero(keep_R)
    if train and sampling == "all_present":
      index = index[presence_RxM[index].all(1)]
      if not len(index):
        raise ValueError(f"all_present sampling: no {split} record has all of {modalities}")
    index = index[process_index::process_count]
    if train:
      # Disjoint slices per process, each in its own seeded order, a new order every epoch.
      ds = grain.MapDataset.range(len(index)).repeat().map_with_index(
          EpochShuffle(index, seed + 7919 * process_index))
    else:
      ds = grain.MapDataset.source(index)
    if train and sampling == "dropout":
      read.update(dropout=modality_dropout, min_modalities=min_modalities)
  ds = ds.batch(local_batch, drop_remainder=train)
  ds = ds.random_map(ReadBatch(**read), seed=seed + process_index)
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
