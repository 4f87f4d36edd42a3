"""ArrayRecord writing: per-recording staging files, deterministic shards, the manifest.

A run writes each converted recording to `<out>/.staging/<id>.array_record` and then a `<id>.json`
summary; the summary's existence marks the recording done, so a killed run resumes where it
stopped. Shards are assembled from the staging files in sorted recording order, so a resumed run
produces the same bytes (and SHA-256) as an uninterrupted one. Every file is written under a
temporary name and renamed into place once complete: nothing partial ever looks finished.
Each uncompressed shard gets a byte-range index beside it (`<shard>.index.json`, see
`sleepjax.data.shard_index`), so readers fetch one modality of one window without the rest.
"""

import json
import os
import pathlib

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from sleepjax.data import shard_index
from sleepjax.data.manifest import MANIFEST, sha256  # pylint: disable=unused-import (re-exported)

STAGING = ".staging"
# group_size:1 keeps every record individually addressable for random access. Compression buys
# ~8 % on float16 signals and costs ~4x in read speed (`sleepjax bench data`), so it is off by
# default; `prep.compression` may pick snappy or zstd:<level> instead.
COMPRESSIONS = ("uncompressed", "snappy", "zstd:1", "zstd:3", "brotli:1")


def write_json(path: pathlib.Path, obj) -> pathlib.Path:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
  os.replace(tmp, path)
  return path


def write_records(path: pathlib.Path, records, compression: str = "uncompressed") -> int:
  """Writes an iterable of bytes to `path` atomically; returns the count."""
  if compression not in COMPRESSIONS:
    raise ValueError(f"unknown shard compression {compression!r}; choose from {COMPRESSIONS}")
  tmp = path.with_name(path.name + ".tmp")
  writer = ArrayRecordWriter(os.fspath(tmp), f"group_size:1,{compression}")
  n = 0
  for r in records:
    writer.write(r)
    n += 1
  writer.close()
  os.replace(tmp, path)
  return n


def read_records(path: pathlib.Path):
  reader = ArrayRecordReader(os.fspath(path))
  try:
    for i in range(reader.num_records()):
      yield reader.read([i])[0]
  finally:
    reader.close()


def staging_dir(out_dir: pathlib.Path) -> pathlib.Path:
  path = out_dir / STAGING
  path.mkdir(parents=True, exist_ok=True)
  return path


def finished(out_dir: pathlib.Path) -> dict[str, dict]:
  """Summaries of recordings a previous run completed (by recording id)."""
  return {p.stem: json.loads(p.read_text()) for p in sorted(staging_dir(out_dir).glob("*.json"))}


def write_shards(out_dir: pathlib.Path, split: str, recording_ids: list[str],
                 records_per_shard: int, compression: str = "uncompressed") -> list[dict]:
  """Concatenates staged recordings (in the given order) into numbered shards."""
  staged = staging_dir(out_dir)
  counts = [ArrayRecordReader(os.fspath(staged / f"{r}.array_record")).num_records()
            for r in recording_ids]
  total = sum(counts)
  n_shards = max(1, -(-total // records_per_shard))
  stream = (rec for r in recording_ids for rec in read_records(staged / f"{r}.array_record"))
  shards = []
  for i in range(n_shards):
    name = f"{split}-{i:05d}-of-{n_shards:05d}.array_record"
    size = min(records_per_shard, total - i * records_per_shard)
    n = write_records(out_dir / name, (next(stream) for _ in range(size)), compression)
    digest = sha256(out_dir / name)
    shards.append({"path": name, "records": n, "bytes": (out_dir / name).stat().st_size,
                   "sha256": digest, "index": write_index(out_dir / name, digest)})
  # Shards of an earlier run with another layout must not linger beside the new ones.
  keep = {s["path"] for s in shards} | {s["index"] for s in shards if s["index"]}
  for pattern in ("*.array_record", "*.array_record" + shard_index.INDEX_SUFFIX):
    for old in out_dir.glob(f"{split}-*-of-{pattern}"):
      if old.name not in keep:
        old.unlink()
  return shards


def write_index(path: pathlib.Path, digest: str) -> str | None:
  """Writes the shard's byte-range index beside it; returns its file name (None: compressed)."""
  index = shard_index.build_index(os.fspath(path), read_records(path))
  if index is None:
    return None
  index["shard_sha256"] = digest
  out = path.with_name(path.name + shard_index.INDEX_SUFFIX)
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text(json.dumps(index, separators=(",", ":")))
  os.replace(tmp, out)
  return out.name


def write_manifest(out_dir: pathlib.Path, manifest: dict) -> pathlib.Path:
  return write_json(out_dir / MANIFEST, manifest)
