"""Byte ranges inside ArrayRecord shards: one modality of one window without reading the rest.

An uncompressed ArrayRecord (Riegeli) file stores each record's bytes verbatim, interrupted only by
a 24-byte block header at every 64 KiB of the file. Counting file bytes with the block headers
left out ("data positions"), a record written with `group_size:1` is one contiguous run of data
positions. After writing a shard, `data_prep.writer` locates every record in it (`build_index`),
checks every byte of every record read back this way against what it wrote, and stores a small
sidecar `<shard>.index.json`: per record the data position of its bytes, its array layout and its
metadata. Readers (`Shards`) then `pread` epochs [a, b) of one array straight into their place in
a batch: one copy per byte, outside the GIL, nothing else of the record touched. Shards written
compressed get no index; the pipeline reads those whole, through ArrayRecord.
"""

import json
import os

import numpy as np

from sleepjax import records

BLOCK = 1 << 16  # Riegeli block size
HEADER = 24  # Riegeli block header at the start of every block
PAYLOAD = BLOCK - HEADER
INDEX_SUFFIX = ".index.json"
_SEARCH = 1 << 20  # how far past the previous record the next one may begin (chunk headers)


def file_position(d: int) -> int:
  """Data position -> file position (skipping the block headers before it)."""
  return (d // PAYLOAD) * BLOCK + HEADER + d % PAYLOAD


def read_into(fd: int, d: int, out: memoryview):
  """Reads data positions [d, d + len(out)) of an open shard into `out` (bytes), block by block."""
  done, n = 0, len(out)
  while done < n:
    k = min(n - done, PAYLOAD - (d + done) % PAYLOAD)
    got = os.preadv(fd, [out[done:done + k]], file_position(d + done))
    if got != k:
      raise ValueError(f"short read of a shard ({got} of {k} bytes at data position {d + done}): "
                       "truncated?")
    done += k


_SCRATCH = memoryview(bytearray(HEADER))  # block headers inside a range are read into this
_IOV_MAX = 1000  # iovecs per preadv (Linux allows 1024)


def _preadv(fd: int, iov: list, pos: int, want: int) -> int:
  """preadv that must read `want` bytes at file position `pos`; returns the position after."""
  if (got := os.preadv(fd, iov, pos)) != want:
    raise ValueError(f"short read of a shard ({got} of {want} bytes at {pos}): truncated?")
  return pos + want


def _read(fd: int, d: int, n: int) -> bytes:
  buf = bytearray(n)
  read_into(fd, d, memoryview(buf))
  return bytes(buf)


def build_index(path: str, blobs) -> dict | None:
  """Locates each of `blobs` (the records just written to the uncompressed shard `path`, in order)
  and verifies it byte for byte; None if any record is not found verbatim (e.g. compressed)."""
  size = os.path.getsize(path)
  data_end = (size // BLOCK) * PAYLOAD + max(size % BLOCK - HEADER, 0)
  fd = os.open(path, os.O_RDONLY)
  layouts, layout_ids, entries, meta = [], {}, [], []
  try:
    end = 0
    for blob in blobs:
      window = _read(fd, end, min(_SEARCH, data_end - end))
      at = window.find(blob[:64])
      if at < 0:
        return None
      d = end + at
      if d + len(blob) > data_end or _read(fd, d, len(blob)) != blob:
        return None
      arrays, m = records.layout(blob)
      base = min(off for _, _, off in arrays.values())  # offsets from here repeat across records
      arrays = {name: (dtype, shape, off - base) for name, (dtype, shape, off) in arrays.items()}
      _, caption_shape, caption_off = arrays.pop("captions", (None, [0], 0))
      key = json.dumps(arrays, sort_keys=True)
      lid = layout_ids.setdefault(key, len(layouts))
      if lid == len(layouts):
        layouts.append(arrays)
      entries.append([d + base, lid, caption_off, int(np.prod(caption_shape))])
      meta.append(m)
      end = d + len(blob)
  finally:
    os.close(fd)
  return {"schema_version": records.SCHEMA_VERSION, "block": BLOCK, "header": HEADER,
          "layouts": layouts, "records": entries, "meta": meta}


class Shards:
  """Random access to epoch ranges of arrays over a split's indexed shards (global record ids).

  Holds open file descriptors, reopened after pickling (worker processes) or forking.
  """

  def __init__(self, paths: list[str], indexes: list[dict]):
    self.paths = list(paths)
    self.layouts, self._meta, rows, shard = [], [], [], []
    for s, index in enumerate(indexes):
      if index.get("schema_version") != records.SCHEMA_VERSION or index["block"] != BLOCK:
        records.check_version(index.get("schema_version"), f"{paths[s]}{INDEX_SUFFIX}")
      base = len(self.layouts)
      self.layouts += index["layouts"]
      rows += [[d, base + lid, c0, cn] for d, lid, c0, cn in index["records"]]
      shard += [s] * len(index["records"])
      self._meta += index["meta"]
    self._rows = np.asarray(rows, np.int64).reshape(-1, 4)
    self._shard = np.asarray(shard, np.int32)
    self._fds, self._pid, self._placements = None, None, {}

  def __len__(self):
    return len(self._rows)

  def __getstate__(self):
    return {**self.__dict__, "_fds": None, "_pid": None}

  def _fd(self, j: int) -> int:
    if self._pid != os.getpid():  # first use in this process
      self._fds, self._pid = [os.open(p, os.O_RDONLY) for p in self.paths], os.getpid()
    return self._fds[self._shard[j]]

  def batch(self, _) -> "Shards":
    return self  # nothing to prepare: every read goes to the file

  def meta(self, j: int) -> dict:
    return self._meta[j]

  def array(self, j: int, name: str) -> tuple[np.dtype, list[int]]:
    try:
      dtype, shape, _ = self.layouts[self._rows[j, 1]][name]
    except KeyError:
      raise ValueError(f"records lack {name!r} (prepared for other modalities?)") from None
    return np.dtype(dtype), shape

  def _placement(self, name: str) -> tuple[np.ndarray, int]:
    """Per layout: the array's offset (-1: absent); its bytes per epoch (the same in all)."""
    if (cached := self._placements.get(name)) is None:
      offsets, sizes = [], set()
      for layout in self.layouts:
        dtype, shape, off = layout.get(name, (None, None, -1))
        offsets.append(off)
        if dtype is not None:
          sizes.add(np.dtype(dtype).itemsize * int(np.prod(shape[1:])))
      if len(sizes) > 1:
        raise ValueError(f"{name}: records of this split differ in its epoch size {sizes}")
      cached = self._placements[name] = np.asarray(offsets, np.int64), sizes.pop() if sizes else 0
    return cached

  def read(self, name: str, j_Z: np.ndarray, e0_Z: np.ndarray, e1_Z: np.ndarray,
           out: np.ndarray, dst_Z: np.ndarray):
    """For each piece p: epochs [e0_Z[p], e1_Z[p]) of array `name` of record j_Z[p] into the bytes
    of `out` (C-contiguous) from byte dst_Z[p] on. One `preadv` per piece: the block headers
    inside a range land in a scratch buffer."""
    offset_per_layout, per_epoch = self._placement(name)
    off_Z = offset_per_layout[self._rows[j_Z, 1]]
    if (off_Z < 0).any():
      raise ValueError(f"records lack {name!r} (prepared for other modalities?)")
    d_Z = self._rows[j_Z, 0] + off_Z + e0_Z * per_epoch
    n_Z = (e1_Z - e0_Z) * per_epoch
    first_Z = np.minimum(n_Z, PAYLOAD - d_Z % PAYLOAD)  # bytes before the first block header
    pos_Z = (d_Z // PAYLOAD) * BLOCK + HEADER + d_Z % PAYLOAD
    self._fd(0)
    fd_Z = np.asarray(self._fds)[self._shard[j_Z]]
    buf = memoryview(out).cast("B")
    if (dst_Z + n_Z).max(initial=0) > buf.nbytes:
      raise ValueError(f"{name}: reads past the end of the batch array")
    for fd, pos, n, first, dst in zip(fd_Z.tolist(), pos_Z.tolist(), n_Z.tolist(),
                                      first_Z.tolist(), dst_Z.tolist()):
      iov, want = [buf[dst:dst + first]], first
      done = first
      while done < n:  # the rest of the range continues after each block header
        k = min(PAYLOAD, n - done)
        iov += [_SCRATCH, buf[dst + done:dst + done + k]]
        want += HEADER + k
        done += k
        if len(iov) >= _IOV_MAX - 1 and done < n:  # one syscall's iovec limit: read, go on
          pos, want, iov = _preadv(fd, iov, pos, want), 0, []
      if iov:
        _preadv(fd, iov, pos, want)

  def captions(self, j: int) -> dict:
    d, _, c0, cn = self._rows[j]
    return records.texts(np.frombuffer(_read(self._fd(j), int(d + c0), int(cn)), np.uint8))

  def close(self):
    for fd in self._fds or ():
      os.close(fd)
    self._fds = None


def load(paths: list[str], shards: list[dict]) -> Shards | None:
  """The split's byte-range reader, or None when any shard has no index (compressed shards)."""
  indexes = []
  for path, shard in zip(paths, shards):
    if not shard.get("index"):
      return None
    with open(os.path.join(os.path.dirname(path), shard["index"])) as f:
      index = json.load(f)
    if index.get("shard_sha256") != shard["sha256"]:
      raise ValueError(f"{path}{INDEX_SUFFIX}: index of another shard (SHA-256 differs); "
                       "re-run `sleepjax prep`")
    indexes.append(index)
  return Shards(paths, indexes)
