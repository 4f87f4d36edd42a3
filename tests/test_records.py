import numpy as np
import pytest

from sleepjax import records


def test_round_trip_and_zero_copy():
  arrays = {"sig/eeg": np.random.default_rng(0).normal(size=(3, 2, 7)).astype(np.float16),
            "stage": np.array([0, 2, -1], np.int8), "mask/eeg": np.ones((3, 2), bool)}
  meta = {"recording_id": "r1", "age": None, "first_epoch": 10}
  blob = records.encode(arrays, meta)
  out, meta_out = records.decode(blob)
  assert meta_out == meta
  for k, v in arrays.items():
    np.testing.assert_array_equal(out[k], v)
    assert out[k].dtype == v.dtype
    assert not out[k].flags.owndata  # a view into the record bytes, not a copy


def test_rejects_foreign_bytes_and_future_versions():
  with pytest.raises(ValueError, match="magic"):
    records.decode(b"PK\x03\x04" + b"\0" * 20)
  blob = bytearray(records.encode({"x": np.zeros(2)}, {}))
  blob[3] = records.SCHEMA_VERSION + 1
  with pytest.raises(ValueError, match="schema version"):
    records.decode(bytes(blob))


def test_text_arrays_round_trip_unparsed_until_asked():
  caps = {"brain": ["delta 97 %", ""], "cardiac": ["HR 63 bpm", "µV ok"]}
  out, _ = records.decode(records.encode({"captions": records.text_array(caps)}, {}))
  assert out["captions"].dtype == np.uint8 and records.texts(out["captions"]) == caps


def test_byte_ranges_of_records_across_block_boundaries(tmp_path, monkeypatch):
  from data_prep.writer import write_records  # pylint: disable=g-import-not-at-top
  from sleepjax.data import shard_index  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = [{"sig/eeg": rng.normal(size=(int(e), 2, 3840)).astype(np.float16),
             "mask/eeg": rng.random((int(e), 2)) < 0.5} for e in rng.integers(1, 40, 12)]
  blobs = [records.encode(a, {"recording_id": f"r{i}", "first_epoch": 0})
           for i, a in enumerate(arrays)]
  path = tmp_path / "x.array_record"
  write_records(path, blobs)
  index = shard_index.build_index(str(path), blobs)
  index["shard_sha256"] = "x"
  shards = shard_index.Shards([str(path)], [index])
  read = lambda name, j, e0, e1, out: shards.read(name, *map(np.array, ([j], [e0], [e1])), out,
                                                  np.array([0]))
  for j, a in enumerate(arrays):
    e = len(a["sig/eeg"])
    monkeypatch.setattr(shard_index, "_IOV_MAX", 4 if j % 2 else 1000)  # several preadv per range
    for e0, e1 in ((0, e), (e // 3, e - e // 4)):
      out = np.empty((e1 - e0, 2, 3840), np.float16)
      read("sig/eeg", j, e0, e1, out)
      np.testing.assert_array_equal(out, a["sig/eeg"][e0:e1])
    out = np.empty((e, 2), bool)
    read("mask/eeg", j, 0, e, out)
    np.testing.assert_array_equal(out, a["mask/eeg"])
  write_records(path, blobs, "zstd:1")  # compressed: not verbatim in the file, so no index
  assert shard_index.build_index(str(path), blobs) is None
