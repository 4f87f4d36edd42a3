"""The manifest that `data_prep` writes beside the shards, and what the pipeline reads from it."""

import hashlib
import json
import os
import pathlib

from sleepjax.modalities import CANONICAL

MANIFEST = "manifest.json"


def read_manifest(data_dir: str | os.PathLike) -> dict:
  path = pathlib.Path(data_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f"{path}: no manifest here; run `sleepjax prep` first")
  manifest = json.loads(path.read_text())
  manifest["dir"] = os.fspath(data_dir)
  return manifest


def training_modalities(manifest: dict, wanted=()) -> list[str]:
  """`data.modalities` checked against what the shards hold; empty = every manifest modality."""
  # The manifest's keys are sorted; list them in the canonical order (eeg, eog, emg, ecg, ...).
  have = sorted(manifest["modalities"], key=lambda m: (list(CANONICAL).index(m)
                                                       if m in CANONICAL else len(CANONICAL), m))
  missing = [m for m in wanted if m not in have]
  if missing:
    raise ValueError(f"data.modalities: {', '.join(missing)} not in the prepared data "
                     f"({os.path.join(manifest['dir'], MANIFEST)} has {', '.join(have)}); "
                     "prep with them (prep.modalities) or train on fewer")
  return list(wanted) or have


def shard_paths(manifest: dict, split: str) -> list[str]:
  if split not in manifest["splits"]:
    raise KeyError(f"split {split!r} not in manifest (has {sorted(manifest['splits'])})")
  return [os.path.join(manifest["dir"], s["path"]) for s in manifest["splits"][split]["shards"]]


def sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_shards(manifest: dict, split: str, mode: str = "stamp", process_index: int = 0,
                  process_count: int = 1):
  """Checks the split's shards against the manifest before training reads them.

  Every shard's size is always checked (a stat, free). `full` hashes every shard; `stamp` hashes a
  shard only when its size or mtime differ from the stamp left by the last successful check
  (`<data>/.verified/<shard>.json`), so terabytes are hashed once, not at every start; `size` stops
  at the size check. With several processes, process i hashes shards i, i+n, ... Raises ValueError
  naming the shard that does not match.
  """
  if mode not in ("full", "stamp", "size"):
    raise ValueError(f"unknown shard verification mode {mode!r} (full, stamp, size)")
  stamps = pathlib.Path(manifest["dir"]) / ".verified"
  for i, shard in enumerate(manifest["splits"][split]["shards"]):
    path = os.path.join(manifest["dir"], shard["path"])
    if not os.path.exists(path):
      raise ValueError(f"{path}: shard listed in the manifest is missing")
    stat = os.stat(path)
    if "bytes" in shard and stat.st_size != shard["bytes"]:
      raise ValueError(f"{path}: {stat.st_size} bytes, the manifest says {shard['bytes']} "
                       "(truncated or replaced; re-run `sleepjax prep`)")
    if mode == "size" or i % process_count != process_index:
      continue
    stamp_path = stamps / f"{shard['path']}.json"
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard["sha256"]}
    if mode == "stamp" and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
      continue
    if (actual := sha256(path)) != shard["sha256"]:
      raise ValueError(f"{path}: SHA-256 {actual[:16]}... does not match the manifest "
                       f"({shard['sha256'][:16]}...); the shard is corrupt or from another prep run")
    try:
      stamps.mkdir(exist_ok=True)
      tmp = stamp_path.with_name(stamp_path.name + ".tmp")
      tmp.write_text(json.dumps(stamp))
      os.replace(tmp, stamp_path)
    except OSError:  # read-only data: verification still happened, just not remembered
      pass
  check_records(manifest, split)


def check_records(manifest: dict, split: str):
  """Refuses shards whose records disagree with the manifest (a data dir assembled from two prep
  runs, or a manifest edited by hand): the first record of each shard must carry the manifest's
  prep-config hash, `segment_epochs` epochs and the manifest's modalities at their rates and
  channel counts. One record per shard: cheap. Raises ValueError naming the shard."""
  from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  e = manifest.get("segment_epochs")
  for shard in manifest["splits"][split]["shards"]:
    path = os.path.join(manifest["dir"], shard["path"])
    reader = ArrayRecordReader(path)
    try:
      if not reader.num_records():
        continue
      arrays, meta = records.decode(reader.read([0])[0])
    finally:
      reader.close()
    problems = []
    want, got = manifest.get("prep_config_hash"), meta.get("prep_config_hash")
    if want is not None and got != want:
      problems.append(f"prep config {got} vs the manifest's {want}")
    if e is not None and "stage" in arrays and len(arrays["stage"]) != e:
      problems.append(f"{len(arrays['stage'])} epochs per record vs segment_epochs={e}")
    for m, spec in manifest.get("modalities", {}).items():
      x = arrays.get(f"sig/{m}")
      shape = (e, len(spec["channels"]), int(round(spec["rate"] * manifest["epoch_seconds"])))
      if x is None:
        problems.append(f"no {m} signal")
      elif e is not None and tuple(x.shape) != shape:
        problems.append(f"{m} shaped {tuple(x.shape)} vs {shape}")
    if problems:
      raise ValueError(f"{path}: records disagree with the manifest ({'; '.join(problems)}); the "
                       "shards come from another prep run: re-run `sleepjax prep`")
