import numpy as np
import pytest

from sleepjax import records
from sleepjax.data.manifest import read_manifest, shard_paths


def test_tfds_builder_serves_the_same_segments(prepared, tmp_path):
  tfds_builder = pytest.importorskip("data_prep.tfds_builder")
  builder = tfds_builder.SleepSegments(source_dir=prepared / "data", data_dir=tmp_path)
  builder.download_and_prepare(file_format="array_record")
  source = builder.as_data_source(split="test")
  manifest = read_manifest(prepared / "data")
  assert len(source) == manifest["splits"]["test"]["records"]
  from data_prep.writer import read_records  # pylint: disable=g-import-not-at-top
  native = {}
  for path in shard_paths(manifest, "test"):
    for blob in read_records(path):
      arrays, meta = records.decode(blob)
      native[(meta["recording_id"], meta["first_epoch"])] = arrays
  for i in range(len(source)):
    ex = source[i]
    arrays = native[(ex["recording_id"].decode(), int(ex["first_epoch"]))]
    np.testing.assert_array_equal(ex["signals"]["eeg"], arrays["sig/eeg"])
    np.testing.assert_array_equal(ex["masks"]["spo2"], arrays["mask/spo2"])
    np.testing.assert_array_equal(ex["stage"], arrays["stage"])
