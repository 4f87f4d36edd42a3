import copy
import itertools

import numpy as np
import pytest

from sleepjax.data import pipeline
from sleepjax.data.manifest import read_manifest

MODS = ["eeg", "ecg", "spo2"]


def _manifest_without_spo2(prepared):
  """The prepared manifest, with SpO2 declared absent in the first training recording."""
  manifest = copy.deepcopy(read_manifest(prepared / "data"))
  first = manifest["splits"]["train"]["recordings"][0]
  manifest["recordings"][first]["present"]["spo2"] = [False]
  return manifest, first


def _pairs_seen(manifest, weights=None, steps=150, batch=4, **kw):
  ds = pipeline.make_dataset(manifest, "train", MODS, local_batch=batch, seed=3, train=True,
                             sampling="pair_first", pair_weights=weights, **kw)
  it = iter(ds)
  seen = []
  for _ in range(steps):
    b = next(it)
    kept = tuple(m for m in MODS if f"signals/{m}" in b)  # a pair-first batch carries its pair
    assert set(b) == {*(f"signals/{m}" for m in kept), *(f"masks/{m}" for m in kept),
                      *pipeline.DEFAULT_FIELDS} and len(kept) == 2
    seen.append((kept, b["recording"]))
  return seen


def test_pair_first_frequencies_and_membership(prepared):
  manifest, first = _manifest_without_spo2(prepared)
  recordings = sorted(manifest["recordings"])
  seen = _pairs_seen(manifest)
  pairs = [p for p, _ in seen]
  assert set(pairs) <= set(itertools.combinations(MODS, 2))
  freq = {p: pairs.count(p) / len(pairs) for p in itertools.combinations(MODS, 2)}
  for p, f in freq.items():  # uniform over 3 pairs: 150 draws, 4 standard errors
    assert abs(f - 1 / 3) < 4 * np.sqrt(2 / 9 / 150), freq
  for pair, recs in seen:  # a pair is only drawn from records that have both modalities
    if "spo2" in pair:
      assert recordings.index(first) not in set(recs)


def test_weighted_pairs_and_one_pair_per_global_batch(prepared):
  manifest, _ = _manifest_without_spo2(prepared)
  seen = _pairs_seen(manifest, weights={"eeg+ecg": 3.0, "ecg+spo2": 1.0})
  pairs = [p for p, _ in seen]
  assert set(pairs) == {("eeg", "ecg"), ("ecg", "spo2")}
  assert abs(pairs.count(("eeg", "ecg")) / len(pairs) - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 150)
  # Two processes, same step: the same pair (the global batch trains one pair), other records.
  p0 = _pairs_seen(manifest, steps=20, process_index=0, process_count=2)
  p1 = _pairs_seen(manifest, steps=20, process_index=1, process_count=2)
  assert [p for p, _ in p0] == [p for p, _ in p1]
  assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(p0, p1))


def test_dropout_keeps_the_minimum_and_all_present_filters(prepared):
  manifest, first = _manifest_without_spo2(prepared)
  ds = pipeline.make_dataset(manifest, "train", MODS, local_batch=8, seed=0, train=True,
                             sampling="dropout", modality_dropout=0.9, min_modalities=2)
  b = next(iter(ds))
  present_B = sum(b[f"masks/{m}"].any(axis=(1, 2)) for m in MODS)
  assert (present_B >= 2).all() and (present_B < 3).any()
  ds = pipeline.make_dataset(manifest, "train", MODS, local_batch=8, seed=0, train=True,
                             sampling="all_present")
  it = iter(ds)
  recordings = sorted(manifest["recordings"])
  for _ in range(5):
    assert recordings.index(first) not in set(next(it)["recording"])
  with pytest.raises(ValueError, match="modality_sampling"):
    pipeline.make_dataset(manifest, "train", MODS, local_batch=8, seed=0, train=True,
                          sampling="nope")


def test_pair_weights_without_pair_first_sampling_are_refused():
  """data.pair_weights only weigh pipeline pair draws; with other sampling they would be ignored."""
  from sleepjax.data.pipeline import make_dataset  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"data.pair_weights .* data.modality_sampling='all'"):
    make_dataset({}, "train", ["eeg", "ecg"], local_batch=2, seed=0, train=True, sampling="all",
                 pair_weights={"eeg+ecg": 1.0})
