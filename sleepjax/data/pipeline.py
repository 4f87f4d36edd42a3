"""Grain pipeline: ArrayRecord segments -> local batches of windows -> global jax.Arrays.

record indices (per-process slice + a seeded order per pass, or pair-first draws) -> batches of
indices -> one batch assembly per batch (window crop across segments, only the step's modalities
and fields) -> prefetch (threads, optionally worker processes) -> `prefetch.DevicePrefetch`.

Work happens per batch, not per record, and only on the bytes the step uses: each window of each
array the step asked for is `pread` from the shard straight into its place in the batch (byte
ranges from the shard's index, `shard_index`), outside the GIL; a pair-first batch reads its two
modalities only, and fields an objective does not request are never read. Shards without an index
(compressed) are read whole through ArrayRecord and cropped, with the same result.
"""

import dataclasses
import functools
import os
import sys
import threading

import grain
import jax
import numpy as np

from sleepjax import records
from sleepjax.data import sampling as sampling_lib
from sleepjax.data import shard_index
from sleepjax.data.manifest import shard_paths, verify_shards

SAMPLINGS = ("all", "all_present", "pair_first", "dropout")
PAIR_KEYS = ("pair", "all")  # `data.pair_keys`: what a pair-first batch carries
# Fields a step may request beyond signals/masks (`make_dataset(fields=...)`, `Family.fields`).
FIELDS = ("stage", "events", "features", "epoch_index", "age", "sex", "site", "recording",
          "captions", "caption_mask")
DEFAULT_FIELDS = ("stage", "events", "features", "epoch_index", "age", "sex", "site", "recording")
_PER_EPOCH = ("stage", "events", "features")  # read from the records, like signals


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, pass_: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, pass_]).permutation(n)


@dataclasses.dataclass(frozen=True)
class PassShuffle(grain.transforms.MapWithIndex):
  """Global example index -> record index: a fresh seeded permutation of `index` every pass over
  the data ("epoch" is reserved for 30-s epochs).

  Grain's index_shuffle costs ~0.4 ms per element on small datasets (a few hundred records per
  process); one cached numpy permutation per pass costs nothing per element at any size.
  """
  index: np.ndarray
  seed: int

  def map_with_index(self, i: int, _) -> int:
    pass_, j = divmod(i, len(self.index))
    return int(self.index[_permutation(self.seed, pass_, len(self.index))[j]])


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  return CaptionTokenizer(path)


_POOL, _POOL_LOCK, _POOL_MAX = {}, threading.Lock(), 64


def _recycled(shape: tuple, dtype) -> np.ndarray:
  """An uninitialised batch array: one that every consumer has dropped (only the pool still
  refers to it), else a new one. Filling fresh memory costs about as much again as the copy
  itself (page faults), so big batch buffers are reused rather than reallocated."""
  key = (shape, np.dtype(dtype).str)
  with _POOL_LOCK:
    arrays = _POOL.setdefault(key, [])
    for a in arrays:
      if sys.getrefcount(a) == 3:  # the pool's list, `a`, getrefcount's own argument
        return a
    a = np.empty(shape, dtype)
    if len(arrays) < _POOL_MAX:
      arrays.append(a)
    return a


def release_buffers():
  """Forgets the recycled batch buffers (e.g. between differently shaped datasets)."""
  with _POOL_LOCK:
    _POOL.clear()


class _Decoded:
  """Reader for shards without a byte-range index (compressed): whole records through ArrayRecord,
  decoded once per batch, then cropped like the byte-range reads."""

  def __init__(self, source):
    self.source, self.decoded = source, {}

  def __len__(self):
    return len(self.source)

  def batch(self, js) -> "_Decoded":
    out = _Decoded(self.source)
    out.decoded = {j: records.decode(self.source[j]) for j in set(js)}
    return out

  def array(self, j: int, name: str):
    if (a := self.decoded[j][0].get(name)) is None:
      raise ValueError(f"records lack {name!r} (prepared for other modalities?)")
    return a.dtype, a.shape

  def read(self, name: str, j_Z, e0_Z, e1_Z, out: np.ndarray, dst_Z):
    flat = out.reshape(-1).view(np.uint8)
    for j, e0, e1, dst in zip(j_Z.tolist(), e0_Z.tolist(), e1_Z.tolist(), dst_Z.tolist()):
      x = self.decoded[j][0][name][e0:e1].reshape(-1).view(np.uint8)
      flat[dst:dst + len(x)] = x

  def meta(self, j: int) -> dict:
    return self.decoded[j][1]

  def captions(self, j: int) -> dict:
    return records.texts(self.decoded[j][0]["captions"])


@dataclasses.dataclass(frozen=True)
class ReadBatch(grain.transforms.RandomMap):
  """Record indices [B] (and, pair-first, pair ids [B]) -> one batch of flat numpy arrays.

  Keys: signals/<m> [B, W, C, S] and masks/<m> [B, W, C] for the batch's modalities (a pair-first
  batch: its pair only; with `pair_keys="all"` every modality, the others zero and absent, and
  pair [B, 2], the pair's indices into `modalities`), then only the requested `fields`: stage
  [B, W], events [B, W, 30], features [B, W, F], epoch_index [B, W], age/sex/site/recording [B],
  captions/caption_mask [B, W, G, L]. W = `window` epochs or the segment. A window starts in its
  anchor record (the index) and may run on into the recording's next segments, up to the whole
  night.
  """
  source: object  # shard_index.Shards or _Decoded
  modalities: tuple[str, ...]
  fields: frozenset
  record_head: np.ndarray  # [R] first record of the record's recording
  record_epoch: np.ndarray  # [R] first epoch of the record in its recording
  record_span: np.ndarray  # [R] epochs of the record's recording held in segments
  record_site: np.ndarray  # [R]
  record_recording: np.ndarray  # [R]
  segment_epochs: int
  window: int | None = None
  train: bool = True
  pairs: tuple = ()  # pair-first: (a, b) modality indices per pair id
  pair_keys: str = "pair"  # pair-first: the pair's keys only, or "all" (`data.pair_keys`)
  dropout: float = 0.0
  min_modalities: int = 1
  caption_groups: tuple[str, ...] = ()
  tokenizer_path: str = ""
  caption_len: int = 0
  shared_memory: bool = False  # in worker processes: batches built in place in shared memory
  gain: float = 1.0  # training only: amplitude gain per modality per window, log-uniform [1/g, g]

  def starts(self, index_B: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """First epoch (in its recording) of each window anchored at records `index_B`."""
    E, W = self.segment_epochs, self.window
    first_B, span_B = self.record_epoch[index_B], self.record_span[index_B]
    if not W:
      return first_B
    if not self.train:
      return np.minimum(first_B, span_B - W)
    if W <= E:
      return first_B + rng.integers(0, E - W + 1, len(index_B))
    return np.minimum(first_B + rng.integers(0, E, len(index_B)), span_B - W)

  def random_map(self, batch, rng: np.random.Generator) -> dict:
    index_B, pair_B = batch if isinstance(batch, tuple) else (batch, None)
    index_B = np.asarray(index_B, np.int64)
    B, E = len(index_B), self.segment_epochs
    W = self.window or E
    start_B = self.starts(index_B, rng)
    pieces = []  # per window: (record, first epoch, end epoch, offset in the window)
    for head, s in zip(self.record_head[index_B].tolist(), start_B.tolist()):
      pieces.append([(head + k, max(s, k * E) - k * E, min(s + W, k * E + E) - k * E,
                      max(s, k * E) - s) for k in range(s // E, (s + W - 1) // E + 1)])
    reader = self.source.batch([p[0] for row in pieces for p in row])
    modalities = self.modalities
    if pair_B is not None:  # pair-first: the batch trains one pair and reads only that pair
      pair = self.pairs[int(pair_B[0])]
      modalities = tuple(self.modalities[i] for i in pair)
    names = [(f"signals/{m}", f"sig/{m}") for m in modalities]
    names += [(f"masks/{m}", f"mask/{m}") for m in modalities]
    names += [(f, f) for f in _PER_EPOCH if f in self.fields]
    flat = [(b, *p) for b, row in enumerate(pieces) for p in row]
    b_Z, j_Z, e0_Z, e1_Z, at_Z = (np.asarray(c, np.int64) for c in zip(*flat))
    out = {}
    alloc = grain.multiprocessing.SharedMemoryArray if self.shared_memory else _recycled
    for key, name in names:
      dtype, shape = reader.array(pieces[0][0][0], name)
      x = out[key] = alloc((B, W, *shape[1:]), dtype)
      reader.read(name, j_Z, e0_Z, e1_Z, x, (b_Z * W + at_Z) * (x.nbytes // (B * W)))
    if self.train and self.gain != 1:
      # Electrode impedance and amplifier gain differ between nights and sensors; a probe should
      # read the signal's shape, not its scale.
      for m in modalities:
        x = out[f"signals/{m}"]
        g_B = np.exp(rng.uniform(-1, 1, B) * abs(np.log(self.gain))).astype(x.dtype)
        x *= g_B[:, None, None, None]
    if pair_B is not None and self.pair_keys == "all":
      # The same keys every step, so one compiled step serves every pair; the others stay unread.
      for m in self.modalities:
        for key, name in ((f"signals/{m}", f"sig/{m}"), (f"masks/{m}", f"mask/{m}")):
          if key not in out:
            dtype, shape = reader.array(pieces[0][0][0], name)
            out[key] = alloc((B, W, *shape[1:]), dtype)
            out[key].fill(0)
      out["pair"] = np.tile(np.asarray(pair, np.int32), (B, 1))
    if "epoch_index" in self.fields:
      out["epoch_index"] = start_B.astype(np.int32)[:, None] + np.arange(W, dtype=np.int32)
    if "age" in self.fields:
      out["age"] = np.array([np.nan if (a := reader.meta(j)["age"]) is None else a
                             for j in index_B.tolist()], np.float32)
    if "sex" in self.fields:
      out["sex"] = np.array([-1 if (x := reader.meta(j)["sex"]) is None else x
                             for j in index_B.tolist()], np.int32)
    if "site" in self.fields:
      out["site"] = self.record_site[index_B]
    if "recording" in self.fields:
      out["recording"] = self.record_recording[index_B]
    if pair_B is None and self.dropout:
      sampling_lib.drop_modalities(out, self.modalities, self.dropout, self.min_modalities, rng)
    if "captions" in self.fields:
      out["captions"], out["caption_mask"] = self._captions(reader, pieces, W)
    return out

  def _captions(self, reader, pieces, W: int):
    texts = []  # [B][W][G]
    for row in pieces:
      per_group = {g: [] for g in self.caption_groups}
      for j, e0, e1, _ in row:
        caps = reader.captions(j)
        for g in self.caption_groups:
          per_group[g] += caps[g][e0:e1]
      texts += [per_group[g][w] for w in range(W) for g in self.caption_groups]
    ids, mask = _load_tokenizer(self.tokenizer_path).encode(texts, self.caption_len)
    shape = (len(pieces), W, len(self.caption_groups), self.caption_len)
    return ids.reshape(shape), mask.reshape(shape)


def _record_table(manifest: dict, split: str) -> dict:
  """Per record of the split (shard order): its recording's first record, its first epoch, the
  recording's epochs in segments, site and recording ids."""
  E = manifest["segment_epochs"]
  sites = {s: i for i, s in enumerate(manifest["sites"])}
  recording_ids = {r: i for i, r in enumerate(sorted(manifest["recordings"]))}
  head, epoch, span, site, recording = [], [], [], [], []
  for rid in manifest["splits"][split]["recordings"]:
    rec, n = manifest["recordings"][rid], manifest["recordings"][rid]["segments"]
    head += [len(head)] * n
    epoch += list(range(0, n * E, E))
    span += [n * E] * n
    site += [sites[rec["site"]]] * n
    recording += [recording_ids[rid]] * n
  as_array = lambda x: np.asarray(x, np.int64)
  return dict(record_head=as_array(head), record_epoch=as_array(epoch), record_span=as_array(span),
              record_site=np.asarray(site, np.int32),
              record_recording=np.asarray(recording, np.int32))


def _fields(fields, caption_len: int) -> frozenset:
  if fields is None:  # everything but captions, which need a caption length
    return frozenset(DEFAULT_FIELDS + (("captions",) if caption_len else ()))
  fields = frozenset(fields)
  if unknown := fields - set(FIELDS):
    raise ValueError(f"unknown batch fields {sorted(unknown)}; choose from {FIELDS}")
  if fields & {"captions", "caption_mask"}:
    if not caption_len:
      raise ValueError("captions requested but data.caption_len is 0")
    fields |= {"captions"}
  return fields


def make_dataset(manifest: dict, split: str, modalities: list[str], *, local_batch: int, seed: int,
                 train: bool, window: int | None = None, sampling: str = "all",
                 pair_weights: dict | None = None, modality_dropout: float = 0.0,
                 min_modalities: int = 1, process_index: int = 0, process_count: int = 1,
                 caption_len: int = 0, read_threads: int = 2, prefetch: int = 4,
                 workers: int = 0, verify: str = "stamp",
                 subject_fraction: float = 1.0,
                 fields: tuple[str, ...] | None = None,
                 pair_share: sampling_lib.PairShare | None = None,
                 pair_keys: str = "pair", gain: float = 1.0) -> grain.IterDataset:
  """Batches of `local_batch` records for this process.

  train: this process's slice in a new seeded order every pass (or pair-first draws), repeated
  forever, random windows of `window` epochs, the last partial batch dropped. Otherwise one
  ordered pass over whole segments keeping the last partial batch. `sampling`: see
  `sleepjax.data.sampling`; `verify`: see `manifest.verify_shards`; `caption_len` > 0 adds the
  epochs' captions of every group, tokenised with the manifest's tokenizer (`sleepjax caption-tokenizer`);
  `workers` > 0 moves batch assembly into worker processes (see BENCHMARKS.md);
  `subject_fraction` < 1 keeps a fixed subset of the split's subjects (`sampling.subject_subset`).
  `pair_share` (pair_first only): the annealed share of pairs with a new modality (`sleepjax adapt`).
  `pair_keys` (pair_first only): "pair" (a batch carries its pair's modalities) or "all" (every
  modality's keys, the pair's read, the others zero and absent, plus "pair": the step's program
  is the same for every pair; `ReadBatch`).
  `gain` != 1 (train only): each modality of each window scaled by exp(U(-|log gain|, |log gain|)),
  an amplitude augmentation (`data.gain_augment`).
  `fields`: what the step reads beyond signals/masks (`FIELDS`; None = `DEFAULT_FIELDS`, plus
  captions when `caption_len` > 0). `window` may exceed the segment length (up to the shortest recording);
  without `train`, a window starts at each record's first epoch (or earlier, to fit the night).
  """
  if sampling not in SAMPLINGS:
    raise ValueError(f"unknown data.modality_sampling {sampling!r}; choose from {SAMPLINGS}")
  if pair_weights and sampling != "pair_first":  # they would be ignored without a word
    raise ValueError(f"data.pair_weights is set but data.modality_sampling={sampling!r} draws no "
                     "pairs; use modality_sampling='pair_first' or empty pair_weights")
  if pair_keys not in PAIR_KEYS:
    raise ValueError(f"unknown data.pair_keys {pair_keys!r}; choose from {PAIR_KEYS}")
  if pair_keys != "pair" and sampling != "pair_first":  # there is no pair to carry
    raise ValueError(f"data.pair_keys={pair_keys!r} is for pair-first batches, but "
                     f"data.modality_sampling={sampling!r}; use pair_keys='pair'")
  records.check_version(manifest.get("schema_version"), f"{manifest['dir']}: the data's record")
  fields = _fields(fields, caption_len)
  verify_shards(manifest, split, verify, process_index, process_count)
  paths = shard_paths(manifest, split)
  source = shard_index.load(paths, manifest["splits"][split]["shards"])
  if source is None:
    source = _Decoded(grain.sources.ArrayRecordDataSource(paths))
  presence_RxM = sampling_lib.record_presence(manifest, split, modalities)
  if len(presence_RxM) != len(source):
    raise ValueError(f"{manifest['dir']}: manifest lists {len(presence_RxM)} {split} records, "
                     f"shards hold {len(source)}")
  table = _record_table(manifest, split)
  if isinstance(source, shard_index.Shards):
    E = manifest["segment_epochs"]
    expected = [(rid, e) for rid in manifest["splits"][split]["recordings"]
                for e in range(0, manifest["recordings"][rid]["segments"] * E, E)]
    found = [(m["recording_id"], m["first_epoch"]) for m in map(source.meta, range(len(source)))]
    if found != expected:
      raise ValueError(f"{manifest['dir']}: the {split} shards' records are not the manifest's "
                       "(recordings, segments); re-run `sleepjax prep`")
  if window and window > (shortest := int(table["record_span"].min(initial=window))):
    raise ValueError(f"window of {window} epochs is longer than the shortest {split} recording "
                     f"({shortest} epochs in segments)")
  read = dict(source=source, modalities=tuple(modalities), fields=fields, **table,
              segment_epochs=manifest["segment_epochs"], window=window, train=train,
              shared_memory=workers > 0, gain=gain)
  if "captions" in fields:
    if "tokenizer" not in manifest:
      raise ValueError(f"{manifest['dir']}: captions requested but the manifest names no "
                       "tokenizer; run `sleepjax caption-tokenizer` first")
    read.update(caption_groups=tuple(manifest["caption_groups"]), caption_len=caption_len,
                tokenizer_path=os.path.join(manifest["dir"], manifest["tokenizer"]["path"]))

  keep_R = (sampling_lib.subject_subset(manifest, split, subject_fraction)
            if subject_fraction < 1 else np.ones(len(presence_RxM), bool))
  if train and sampling == "pair_first":
    pairs, probs, members = sampling_lib.pair_table(presence_RxM & keep_R[:, None], modalities,
                                                    pair_weights)
    new = set(pair_share.new) if pair_share is not None else set()
    new_P = tuple(bool({modalities[a], modalities[b]} & new) for a, b in pairs)
    ds = grain.MapDataset.range(len(source)).repeat().map_with_index(sampling_lib.PairFirstIndex(
        tuple(pairs), probs, tuple(members), local_batch, seed, process_index, pair_share, new_P))
    read.update(pairs=tuple(pairs), pair_keys=pair_keys)
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
          PassShuffle(index, seed + 7919 * process_index))
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
