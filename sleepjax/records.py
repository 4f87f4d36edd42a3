"""Record encoding: one ArrayRecord record = one segment of E consecutive 30-s epochs.

Layout (little endian): b"SJR" + version byte, uint32 header length, a JSON header, then each array's
raw bytes at a 64-byte aligned offset. `decode` returns numpy views into the record bytes (zero copy).
The header holds scalar metadata and, per array, (dtype, shape, offset); text that only some readers
need (captions) rides as a uint8 JSON array (`text_array` / `texts`).

Every array is epoch-major (`[E, ...]`), so epochs [a, b) of one array are one contiguous byte range
of the record: `layout` gives where each array starts, and the input pipeline reads just the ranges
a step needs straight from the shard (`sleepjax.data.shard_index`), never decoding the rest.
Version 2: segments sized for training (>= the training window) with a byte-range index per shard;
version-1 shards must be prepared again.
"""

import json
import struct

import numpy as np

SCHEMA_VERSION = 2
_MAGIC = b"SJR"
_ALIGN = 64


def _aligned(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN


def encode(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
  """Serialises named arrays plus JSON-able metadata into one record."""
  index, offset = {}, 0
  for name, a in arrays.items():
    a = np.ascontiguousarray(a)
    index[name] = (a.dtype.str, list(a.shape), offset)
    offset = _aligned(offset + a.nbytes)
  header = json.dumps({"meta": meta, "arrays": index}, separators=(",", ":")).encode()
  start = _aligned(len(_MAGIC) + 1 + 4 + len(header))
  buf = bytearray(start + offset)
  buf[:4] = _MAGIC + bytes([SCHEMA_VERSION])
  buf[4:8] = struct.pack("<I", len(header))
  buf[8:8 + len(header)] = header
  for name, a in arrays.items():
    _, _, off = index[name]
    raw = np.ascontiguousarray(a).tobytes()
    buf[start + off:start + off + len(raw)] = raw
  return bytes(buf)


def text_array(obj) -> np.ndarray:
  """JSON-able text (e.g. captions) as a uint8 array: stored with the arrays, parsed only on demand
  (`texts`), so readers that do not need it pay nothing."""
  return np.frombuffer(json.dumps(obj, separators=(",", ":")).encode(), np.uint8)


def texts(array: np.ndarray):
  return json.loads(array.tobytes())


def check_version(version: int, where: str = "record"):
  if version != SCHEMA_VERSION:
    raise ValueError(f"{where} schema version {version}, this sleepjax reads {SCHEMA_VERSION}: "
                     "prepare the data again (`sleepjax prep`)")


def layout(record: bytes) -> tuple[dict[str, tuple[str, list[int], int]], dict]:
  """{name: (dtype, shape, byte offset in the record)} and the metadata, from the header alone."""
  if record[:3] != _MAGIC:
    raise ValueError("not a sleepjax record (bad magic bytes)")
  check_version(record[3])
  (n,) = struct.unpack_from("<I", record, 4)
  header = json.loads(record[8:8 + n])
  start = _aligned(8 + n)
  return {name: (dtype, shape, start + off)
          for name, (dtype, shape, off) in header["arrays"].items()}, header["meta"]


def decode(record: bytes) -> tuple[dict[str, np.ndarray], dict]:
  """Inverse of `encode`; arrays are read-only views into `record`."""
  index, meta = layout(record)
  arrays = {}
  for name, (dtype, shape, off) in index.items():
    arrays[name] = np.frombuffer(record, np.dtype(dtype), int(np.prod(shape)), off).reshape(shape)
  return arrays, meta
