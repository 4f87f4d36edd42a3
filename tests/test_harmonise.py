import numpy as np
import pyedflib

from data_prep import edf, harmonise
from sleepjax.modalities import CANONICAL


def _recording(signals, duration=60.0):
  return edf.Recording("mem.edf", duration, [edf.Signal(*s) for s in signals])


def test_labels_units_rates_and_masks():
  t = np.arange(0, 60, 1 / 125)
  eeg_mv = 0.05 * np.sin(2 * np.pi * 10 * t)  # 50 uV alpha, stored in mV
  rec = _recording([("EEG(sec)", 125.0, "mV", eeg_mv),
                    ("SaO2", 1.0, "%", np.full(60, 97.0)),
                    ("LIGHT", 1.0, "", np.zeros(60))])
  h = harmonise.harmonise(rec, 2, ["eeg", "spo2", "ecg"], harmonise.load_channel_map())
  assert h.unmatched == ["LIGHT"]
  # EEG(sec) is C3-M2: second eeg channel; the first is absent, zero-filled and masked.
  np.testing.assert_array_equal(h.present["eeg"], [False, True])
  assert h.signals["eeg"].shape == (2, 2 * CANONICAL["eeg"].samples_per_epoch)
  assert not h.signals["eeg"][0].any()
  assert not h.present["ecg"].any()
  # Unit conversion to uV is visible in the recorded robust scale; resampled 10 Hz peak survives.
  scale = h.stats["eeg"]["scale"][1]
  assert 40 < scale * 1.349 / 2 * 2 < 110  # IQR of a 50 uV sine ~ 70 uV
  spectrum = np.abs(np.fft.rfft(h.signals["eeg"][1]))
  freqs = np.fft.rfftfreq(h.signals["eeg"].shape[1], 1 / 128)
  assert abs(freqs[spectrum.argmax()] - 10) < 0.1
  # SpO2 keeps its absolute level through fixed scaling: 97 % -> (97 - 95) / 5.
  np.testing.assert_allclose(h.signals["spo2"][0], 0.4, atol=1e-5)


def test_read_edf_round_trip(tmp_path):
  path = str(tmp_path / "x.edf")
  w = pyedflib.EdfWriter(path, 1, file_type=pyedflib.FILETYPE_EDFPLUS)
  w.setSignalHeaders([{"label": "EEG", "dimension": "uV", "sample_frequency": 100,
                       "physical_min": -500, "physical_max": 500, "digital_min": -32768,
                       "digital_max": 32767, "transducer": "", "prefilter": ""}])
  x = 100 * np.sin(np.linspace(0, 20, 1000))
  w.writeSamples([x])
  w.close()
  rec = edf.read_edf(path)
  assert rec.duration_s == 10 and rec.signals[0].label == "EEG" and rec.signals[0].rate == 100
  np.testing.assert_allclose(rec.signals[0].data, x, atol=0.05)


def test_unreadable_file_names_the_path(tmp_path):
  path = tmp_path / "bad.edf"
  path.write_bytes(b"not an edf" * 10)
  try:
    edf.read_edf(path)
  except ValueError as e:
    assert "bad.edf" in str(e)
  else:
    raise AssertionError("expected ValueError")
