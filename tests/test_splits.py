from data_prep.splits import assign_splits


def test_subject_level_splits_are_disjoint_complete_and_deterministic():
  subjects = [f"s{i}" for i in range(10)] + ["s3", "s4"]  # repeated subjects (two nights)
  fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
  a = assign_splits(subjects, fractions, seed=1)
  assert a == assign_splits(subjects, fractions, seed=1)
  assert set(a) == set(subjects)  # every subject, each exactly one split (a dict)
  counts = {k: sum(v == k for v in a.values()) for k in fractions}
  assert counts == {"train": 7, "val": 2, "test": 1}  # 7 / 1.5 / 1.5 by largest remainder
  assert a != assign_splits(subjects, fractions, seed=2)


def test_tiny_cohort_still_fills_every_split():
  a = assign_splits(["a", "b", "c"], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
  assert sorted(a.values()) == ["test", "train", "val"]
