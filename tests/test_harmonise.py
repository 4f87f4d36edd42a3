import numpy as np
import pytest
import pyedflib

from data_prep import channels, edf, harmonise
from sleepjax.modalities import CANONICAL


def _recording(signals, duration=60.0):
  return edf.Recording("mem.edf", duration, [edf.Signal(*s) for s in signals])


def test_labels_units_rates_and_masks():
  t = np.arange(0, 60, 1 / 125)
  eeg_mv = 0.05 * np.sin(2 * np.pi * 10 * t)  # 50 uV alpha, stored in mV
  rec = _recording([("EEG(sec)", 125.0, "mV", eeg_mv),
                    ("SaO2", 1.0, "%", np.full(60, 97.0)),
                    ("LIGHT", 1.0, "", np.zeros(60))])
  h = harmonise.harmonise(channels.resolve_channels(rec), 2, ["eeg", "spo2", "ecg"])
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


def test_resolved_channels_entry_point():
  """The new entry point: channels.resolve_channels(rec) (or its .signals dict) -> harmonise."""
  channels = pytest.importorskip("data_prep.channels")
  t = np.arange(0, 120, 1 / 200)
  rec = _recording([("C4-M1", 200.0, "uV", 30 * np.sin(2 * np.pi * 10 * t)),
                    ("SpO2", 1.0, "%", np.full(120, 96.0)),
                    ("LIGHT", 1.0, "", np.zeros(120))], duration=120.0)
  resolved = channels.resolve_channels(rec)
  h = harmonise.harmonise(resolved, 4, ["eeg", "spo2"])
  assert "LIGHT" in h.unmatched
  np.testing.assert_array_equal(h.present["eeg"], [True, False])
  assert h.epoch_mask["eeg"].shape == (4, 2) and h.epoch_mask["eeg"][:, 0].all()
  assert h.stats["eeg"]["method"] == ["robust", "none"]
  np.testing.assert_allclose(h.signals["spo2"][0], 0.2, atol=1e-5)
  h2 = harmonise.harmonise(resolved.signals, 4, ["eeg", "spo2"])
  np.testing.assert_array_equal(h2.signals["eeg"], h.signals["eeg"])


@pytest.mark.slow
def test_harmonise_speed_8h_nine_modalities():
  """An 8-hour night, 9 modalities at 256/32/1 Hz, heart rate derived from the ECG: < 5 s CPU."""
  import time  # pylint: disable=g-import-not-at-top
  from tests.test_signal import synthetic_ecg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  secs = 8 * 3600
  ecg, _ = synthetic_ecg(duration_s=secs, rate=256.0)
  sig = lambda label, rate, unit, x: edf.Signal(label, rate, unit, x)  # noqa: E731
  exg = lambda: 20 * rng.standard_normal(secs * 256)  # noqa: E731
  resp = lambda: np.sin(2 * np.pi * 0.25 * np.arange(secs * 32) / 32) + 0.1 * rng.standard_normal(secs * 32)  # noqa: E731,E501
  signals = {("eeg", "c4_m1"): sig("C4", 256.0, "uV", exg()),
             ("eeg", "c3_m2"): sig("C3", 256.0, "uV", exg()),
             ("eog", "e1"): sig("E1", 256.0, "uV", exg()), ("eog", "e2"): sig("E2", 256.0, "uV", exg()),
             ("emg", "chin"): sig("Chin", 256.0, "uV", exg()),
             ("ecg", "ecg"): sig("ECG", 256.0, "mV", ecg),
             ("spo2", "spo2"): sig("SpO2", 1.0, "%", np.round(96 + rng.standard_normal(secs))),
             ("airflow", "thermistor"): sig("Flow", 32.0, "", resp()),
             ("nasal_pressure", "pressure"): sig("Pres", 32.0, "", resp()),
             ("resp_effort", "thorax"): sig("Thor", 32.0, "", resp()),
             ("resp_effort", "abdomen"): sig("Abdo", 32.0, "", resp())}
  start = time.process_time()
  h = harmonise.harmonise(signals, secs // 30, list(CANONICAL))
  cpu = time.process_time() - start
  assert all(q.status == "ok" for q in h.qc), [(q.modality, q.reasons) for q in h.qc]
  assert cpu < 5.0, cpu
