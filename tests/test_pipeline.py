import numpy as np
import pytest

from sleepjax.data import pipeline
from sleepjax.data.manifest import read_manifest

MODS = ["eeg", "spo2"]


def _records(ds):
  return [(r, e) for batch in ds for r, e in zip(batch["site"], batch["stage"][:, 0])]


def test_ordered_pass_covers_split_and_processes_are_disjoint(prepared):
  manifest = read_manifest(prepared / "data")
  n = manifest["splits"]["train"]["records"]
  def first_epochs(index, count):
    ds = pipeline.make_dataset(manifest, "train", MODS, window=None, local_batch=4, seed=0,
                               train=False, process_index=index, process_count=count)
    batches = list(ds)
    return np.concatenate([b["signals/eeg"][:, 0, 0, :8].astype(np.float32) for b in batches])
  whole = first_epochs(0, 1)
  assert len(whole) == n
  parts = [first_epochs(i, 3) for i in range(3)]
  assert sum(len(p) for p in parts) == n
  keys = lambda a: {row.tobytes() for row in a}
  assert set.union(*map(keys, parts)) == keys(whole)
  assert not keys(parts[0]) & keys(parts[1]) and not keys(parts[1]) & keys(parts[2])


def test_training_batches_are_windows_with_masks_and_metadata(prepared, tiny_config):
  manifest = read_manifest(prepared / "data")
  ds = pipeline.make_dataset(manifest, "train", MODS, window=4, local_batch=5, seed=0, train=True)
  batch = next(iter(ds))
  assert batch["signals/eeg"].shape == (5, 4, 2, 128 * 30)
  assert batch["signals/spo2"].shape == (5, 4, 1, 4 * 30)
  assert batch["masks/eeg"].shape == (5, 4, 2) and batch["masks/eeg"].dtype == bool
  assert batch["stage"].shape == (5, 4) and batch["events"].shape == (5, 4, 30)
  assert batch["age"].shape == (5,) and set(batch["site"]) <= {0, 1}
  nested = pipeline.nest(batch)
  assert set(nested["signals"]) == set(MODS) and nested["stage"] is batch["stage"]


def test_iterator_state_resumes_exactly(prepared):
  manifest = read_manifest(prepared / "data")
  make = lambda: iter(pipeline.make_dataset(manifest, "train", MODS, window=4, local_batch=3,
                                            seed=1, train=True))
  it = make()
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it)["signals/eeg"] for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["signals/eeg"], want)


def test_corrupt_or_truncated_shard_is_named(prepared, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import verify_shards  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  shutil.copytree(prepared / "data", data)
  manifest = read_manifest(data)
  verify_shards(manifest, "train", "full")
  shard = data / manifest["splits"]["train"]["shards"][0]["path"]
  blob = bytearray(shard.read_bytes())
  blob[len(blob) // 2] ^= 0xFF  # one flipped byte, same size: only the hash can tell
  shard.write_bytes(bytes(blob))
  verify_shards(manifest, "train", "size")  # size-only cannot see it ...
  with pytest.raises(ValueError, match=f"{shard.name}: SHA-256"):  # ... the stamp is stale
    pipeline.make_dataset(manifest, "train", MODS, local_batch=2, seed=0, train=True)
  shard.write_bytes(bytes(blob[:-10]))
  with pytest.raises(ValueError, match=f"{shard.name}: .* bytes, the manifest says"):
    verify_shards(manifest, "train", "size")


def test_training_passes_are_per_process_permutations(prepared):
  manifest = read_manifest(prepared / "data")
  n = manifest["splits"]["train"]["records"]
  key = lambda b: b["signals/eeg"][0, 0, 0, :16].tobytes()
  for index in range(2):
    ordered = pipeline.make_dataset(manifest, "train", MODS, local_batch=1, seed=0, train=False,
                                    process_index=index, process_count=2)
    mine = [key(b) for b in ordered]
    assert len(mine) in (n // 2, n - n // 2)
    it = iter(pipeline.make_dataset(manifest, "train", MODS, local_batch=1, seed=0, train=True,
                                    process_index=index, process_count=2))
    pass1 = [key(next(it)) for _ in mine]
    pass2 = [key(next(it)) for _ in mine]
    assert sorted(pass1) == sorted(mine) == sorted(pass2)  # each pass: all of it, once
    assert pass1 != mine and pass1 != pass2  # shuffled, differently every pass


def test_captions_are_tokenised_in_step_with_the_window(prepared):
  from data_prep.writer import read_records  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import shard_paths  # pylint: disable=g-import-not-at-top
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(prepared / "data")
  recordings = sorted(manifest["recordings"])
  groups = manifest["caption_groups"]
  truth = {}
  for path in shard_paths(manifest, "train"):
    for blob in read_records(path):
      arrays, meta = records.decode(blob)
      for g, texts in records.texts(arrays["captions"]).items():
        for e, text in enumerate(texts):
          truth[(meta["recording_id"], meta["first_epoch"] + e, g)] = text
  tok = CaptionTokenizer(prepared / "data" / manifest["tokenizer"]["path"])
  ds = pipeline.make_dataset(manifest, "train", MODS, window=3, local_batch=4, seed=2, train=True,
                             caption_len=200)
  b = next(iter(ds))
  assert b["captions"].shape == (4, 3, len(groups), 200) and b["caption_mask"].dtype == bool
  checked = 0
  for i in range(4):
    for w in range(3):
      for j, g in enumerate(groups):
        text = truth[(recordings[b["recording"][i]], int(b["epoch_index"][i, w]), g)]
        assert tok.decode(b["captions"][i, w, j]) == text  # round trip, aligned with the crop
        checked += bool(text)
  assert checked > 20


def test_batches_carry_only_requested_fields(prepared):
  manifest = read_manifest(prepared / "data")
  make = lambda **kw: next(iter(pipeline.make_dataset(manifest, "train", MODS, window=4,
                                                      local_batch=2, seed=0, train=True, **kw)))
  signals = {"signals/eeg", "signals/spo2", "masks/eeg", "masks/spo2"}
  assert set(make(fields=())) == signals
  assert set(make(fields=("stage", "age"))) == signals | {"stage", "age"}
  assert set(make()) == signals | set(pipeline.DEFAULT_FIELDS)  # default: what eval reads
  b = make(fields=("captions",), caption_len=50)
  assert set(b) == signals | {"captions", "caption_mask"}
  with pytest.raises(ValueError, match="unknown batch fields"):
    make(fields=("stages",))
  with pytest.raises(ValueError, match="caption_len is 0"):
    make(fields=("captions",))


def test_pair_first_batch_reads_only_its_pair(prepared):
  manifest = read_manifest(prepared / "data")
  ds = pipeline.make_dataset(manifest, "train", ["eeg", "ecg", "spo2"], window=4, local_batch=2,
                             seed=0, train=True, sampling="pair_first",
                             pair_weights={"eeg+spo2": 1.0}, fields=())
  b = next(iter(ds))
  assert set(b) == {"signals/eeg", "signals/spo2", "masks/eeg", "masks/spo2"}


def test_pair_first_batch_with_every_key(prepared):
  """`pair_keys="all"`: every modality's keys (the pair's as read, the other zero and absent) and
  the pair; refused where no pair is drawn, or for a form that does not exist."""
  manifest = read_manifest(prepared / "data")
  make = lambda **kw: next(iter(pipeline.make_dataset(
      manifest, "train", ["eeg", "ecg", "spo2"], window=4, local_batch=2, seed=0, train=True,
      fields=(), **kw)))
  pair_only = make(sampling="pair_first", pair_weights={"eeg+spo2": 1.0})
  b = make(sampling="pair_first", pair_weights={"eeg+spo2": 1.0}, pair_keys="all")
  assert set(b) == {f"{k}/{m}" for k in ("signals", "masks") for m in ("eeg", "ecg", "spo2")} | {
      "pair"}
  assert b["pair"].tolist() == [[0, 2], [0, 2]]
  assert not b["signals/ecg"].any() and not b["masks/ecg"].any()
  for k, x in pair_only.items():
    np.testing.assert_array_equal(b[k], x)
  with pytest.raises(ValueError, match="pair_keys='all' is for pair-first batches"):
    make(sampling="all", pair_keys="all")
  with pytest.raises(ValueError, match="unknown data.pair_keys"):
    make(sampling="pair_first", pair_keys="both")


def test_gain_augment_scales_each_modality_of_each_training_window(prepared):
  """`data.gain_augment`: the same training windows, each modality of each window times its own
  gain in [1/g, g]; evaluation batches untouched."""
  manifest = read_manifest(prepared / "data")
  make = lambda train, **kw: next(iter(pipeline.make_dataset(
      manifest, "train", MODS, window=4 if train else None, local_batch=8, seed=0, train=train,
      fields=(), **kw)))
  plain, scaled = make(True), make(True, gain=2.0)
  gains = []
  for m in MODS:
    x, y = (b[f"signals/{m}"].astype(np.float32) for b in (plain, scaled))
    big = (np.abs(x) > 0.1).reshape(len(x), -1)  # well above float16 rounding
    ratio = np.where(big, y.reshape(big.shape) / np.where(big, x.reshape(big.shape), 1), np.nan)
    g_B = np.nanmedian(ratio, 1)  # one gain per window
    np.testing.assert_allclose(ratio[big], np.broadcast_to(g_B[:, None], big.shape)[big], rtol=2e-3)
    gains += list(g_B[~np.isnan(g_B)])
  assert len(gains) > 8 and min(gains) >= 0.5 and max(gains) <= 2.0
  assert len(set(np.round(gains, 3))) == len(gains)  # drawn per modality and window
  evaluation, evaluation_gain = make(False), make(False, gain=2.0)
  for m in MODS:
    np.testing.assert_array_equal(evaluation[f"signals/{m}"], evaluation_gain[f"signals/{m}"])


def test_window_across_segments_equals_one_long_segment(prepared, tmp_path, tiny_config):
  """The same cohort prepared with 10- and 40-epoch segments: 20-epoch windows read across
  segments equal those read inside one segment, field by field; so do reads of shards without
  a byte-range index (whole records through ArrayRecord)."""
  from data_prep import prep  # pylint: disable=g-import-not-at-top
  config = tiny_config.prep.copy_and_resolve_references()
  config.segment_epochs = 40
  prep.prepare(prepared / "raw", tmp_path / "data40", config)
  short, long = read_manifest(prepared / "data"), read_manifest(tmp_path / "data40")
  assert short["splits"]["train"]["recordings"] == long["splits"]["train"]["recordings"]
  mods = ["eeg", "ecg", "spo2"]

  def windows(manifest):
    out = {}
    for b in pipeline.make_dataset(manifest, "train", mods, window=20, local_batch=4, seed=0,
                                   train=False):
      for i, (r, e) in enumerate(zip(b["recording"], b["epoch_index"][:, 0])):
        out[(int(r), int(e))] = {k: v[i] for k, v in b.items()}
    return out

  a, b = windows(short), windows(long)  # every window of `a` spans two 10-epoch segments
  assert set(b) <= set(a) and len(b) >= 4
  for key, want in b.items():
    assert set(a[key]) == set(want)
    for k in want:
      np.testing.assert_array_equal(a[key][k], want[k], err_msg=str((key, k)))

  import copy  # pylint: disable=g-import-not-at-top
  whole = copy.deepcopy(short)
  for shard in whole["splits"]["train"]["shards"]:
    shard["index"] = None  # as for compressed shards: read whole records through ArrayRecord
  c = windows(whole)
  for key, want in a.items():
    for k in want:
      np.testing.assert_array_equal(c[key][k], want[k])


def test_old_schema_and_too_long_windows_are_refused(prepared):
  import copy  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(prepared / "data")
  old = copy.deepcopy(manifest)
  old["schema_version"] = 1
  with pytest.raises(ValueError, match="schema version 1, this sleepjax reads 2.*sleepjax prep"):
    pipeline.make_dataset(old, "train", MODS, local_batch=2, seed=0, train=True)
  with pytest.raises(ValueError, match="longer than the shortest train recording"):
    pipeline.make_dataset(manifest, "train", MODS, window=10_000, local_batch=2, seed=0, train=True)
