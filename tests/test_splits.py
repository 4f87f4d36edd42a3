import collections

import pytest

from data_prep.splits import assign_splits, split_hash, split_of

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_subject_level_splits_are_disjoint_complete_and_deterministic():
  subjects = [f"s{i}" for i in range(10)] + ["s3", "s4"]  # repeated subjects (two nights)
  a = assign_splits(subjects, FRACTIONS, seed=1)
  assert a == assign_splits(subjects, FRACTIONS, seed=1)
  assert set(a) == set(subjects)  # every subject, each exactly one split (a dict)
  assert set(a.values()) <= set(FRACTIONS)
  assert a != assign_splits(subjects, FRACTIONS, seed=2)
  assert split_hash(a) == split_hash(dict(reversed(list(a.items()))))
  assert split_hash(a) != split_hash(assign_splits(subjects, FRACTIONS, seed=2))


def test_fractions_are_met_on_a_large_cohort():
  a = assign_splits([f"subject-{i}" for i in range(20000)], FRACTIONS, seed=0)
  counts = collections.Counter(a.values())
  for k, f in FRACTIONS.items():
    assert abs(counts[k] / 20000 - f) < 0.01, counts
  # A zero fraction gets nobody; the order the fractions are written in does not matter.
  assert "val" not in assign_splits(list(a)[:500], {"train": 0.8, "val": 0.0, "test": 0.2}, 0)
  assert a == assign_splits(list(a), dict(reversed(list(FRACTIONS.items()))), seed=0)


def test_adding_or_removing_subjects_moves_nobody():
  cohort = [f"sub-{i:05d}" for i in range(3000)]
  before = assign_splits(cohort, FRACTIONS, seed=7)
  grown = assign_splits(cohort + [f"new-{i}" for i in range(1000)], FRACTIONS, seed=7)
  shrunk = assign_splits(cohort[::3], FRACTIONS, seed=7)
  assert all(grown[s] == before[s] for s in cohort)
  assert all(shrunk[s] == before[s] for s in cohort[::3])
  assert all(split_of(s, FRACTIONS, 7) == before[s] for s in cohort[:50])  # one at a time too


def test_eval_refuses_a_checkpoint_trained_on_other_splits(monkeypatch):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpoint, "saved_meta", lambda directory, step: {"split_hash": "a" * 64})
  checkpoint.check_split_hash("ckpt", 7, {"split_hash": "a" * 64, "dir": "data"})  # same: fine
  checkpoint.check_split_hash("ckpt", 7, {"dir": "data"})  # an older manifest: nothing to compare
  with pytest.raises(ValueError, match="split hash bbbbbbbbbbbb differs .* checkpoint 7 trained on"):
    checkpoint.check_split_hash("ckpt", 7, {"split_hash": "b" * 64, "dir": "data"})
  checkpoint.check_split_hash("ckpt", 7, {"split_hash": "b" * 64}, allow_mismatch=True)  # warns
