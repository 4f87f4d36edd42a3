"""The manifest that `data_prep` writes beside the shards, and what the pipeline reads from it."""

import json
import os
import pathlib

MANIFEST = "manifest.json"


def read_manifest(data_dir: str | os.PathLike) -> dict:
  path = pathlib.Path(data_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f"{path}: no manifest here; run `sleepjax prep` first")
  manifest = json.loads(path.read_text())
  manifest["dir"] = os.fspath(data_dir)
  return manifest


def shard_paths(manifest: dict, split: str) -> list[str]:
  if split not in manifest["splits"]:
    raise KeyError(f"split {split!r} not in manifest (has {sorted(manifest['splits'])})")
  return [os.path.join(manifest["dir"], s["path"]) for s in manifest["splits"][split]["shards"]]
