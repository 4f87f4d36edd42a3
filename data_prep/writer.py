"""ArrayRecord shard writing and the manifest."""

import hashlib
import json
import os
import pathlib

from array_record.python.array_record_module import ArrayRecordWriter

from sleepjax.data.manifest import MANIFEST


def sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def write_shards(out_dir: pathlib.Path, split: str, records: list[bytes],
                 records_per_shard: int) -> list[dict]:
  """Writes `records` into numbered shards; returns [{path, records, sha256}] (paths relative)."""
  n_shards = max(1, -(-len(records) // records_per_shard))
  shards = []
  for i in range(n_shards):
    name = f"{split}-{i:05d}-of-{n_shards:05d}.array_record"
    chunk = records[i * records_per_shard:(i + 1) * records_per_shard]
    tmp = out_dir / (name + ".tmp")
    # group_size:1 keeps every record individually addressable for random access.
    writer = ArrayRecordWriter(os.fspath(tmp), "group_size:1")
    for r in chunk:
      writer.write(r)
    writer.close()
    os.replace(tmp, out_dir / name)  # a shard only gets its final name once complete
    shards.append({"path": name, "records": len(chunk), "sha256": sha256(out_dir / name)})
  return shards


def write_manifest(out_dir: pathlib.Path, manifest: dict) -> pathlib.Path:
  path = out_dir / MANIFEST
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  os.replace(tmp, path)
  return path

