"""Prep at cohort scale: N shard jobs + one merge produce the same bytes as a single `prep`."""

import copy
import filecmp
import os

import pytest

from data_prep import prep
from data_prep.writer import STAGING


def _files(root) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root)
                for f in files if STAGING not in d and ".verified" not in d)


def _prep_config(tiny_config, **changes):
  config = copy.deepcopy(tiny_config.prep)
  config.workers = 1
  for k, v in changes.items():
    config[k] = v
  return config


def _small_cohort(raw, dst, n: int):
  """The first n recordings of a cohort (the same files, a shorter metadata.csv)."""
  dst.mkdir()
  for folder in ("edf", "annotations"):
    os.symlink(raw / folder, dst / folder)
  lines = (raw / "metadata.csv").read_text().splitlines(keepends=True)
  (dst / "metadata.csv").write_text("".join(lines[:n + 1]))
  return dst


def test_two_shards_and_merge_equal_single_prep_byte_for_byte(prepared, tiny_config, tmp_path):
  raw = _small_cohort(prepared / "raw", tmp_path / "raw", 3)
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  prep.prepare(raw, single, _prep_config(tiny_config))

  prep.prepare(raw, sharded, _prep_config(tiny_config, num_shards=2, shard_index=1))
  assert not (sharded / "manifest.json").exists()  # a shard job converts, it does not assemble
  with pytest.raises(ValueError, match=r"not converted yet: .*\(shard 0\)"):
    prep.prepare(raw, sharded, _prep_config(tiny_config, num_shards=2, merge=True))
  prep.prepare(raw, sharded, _prep_config(tiny_config, num_shards=2, shard_index=0))
  staged = sorted(p.stem for p in (sharded / STAGING).glob("*.json"))
  assert len(staged) == 3
  prep.prepare(raw, sharded, _prep_config(tiny_config, num_shards=2, merge=True))

  names = _files(single)
  assert "manifest.json" in names and any(n.endswith(".array_record") for n in names)
  assert names == _files(sharded)
  _, mismatch, errors = filecmp.cmpfiles(single, sharded, names, shallow=False)
  assert not mismatch and not errors


def test_shard_slices_are_disjoint_and_cover_the_cohort(tiny_config):
  from data_prep.cluster import Slice  # pylint: disable=g-import-not-at-top
  metas = [{"recording_id": f"r{i}"} for i in range(11)]
  parts = [Slice(3, i).select(metas, metas) for i in range(3)]
  ids = [m["recording_id"] for p in parts for m in p]
  assert sorted(ids) == sorted(m["recording_id"] for m in metas) and len(set(ids)) == 11
  assert Slice(3, 1).select(metas, metas[:1]) == []  # resumes: only what is left of its slice
  with pytest.raises(ValueError, match="shard_index"):
    Slice.from_config(_prep_config(tiny_config, num_shards=2, shard_index=2))
