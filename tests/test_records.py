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
