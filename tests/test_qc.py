"""Quality control: every failure mode detected on constructed signals, masks applied, report."""

import csv
import json

import numpy as np

from data_prep import edf, harmonise, qc

E = 20  # epochs (10 min)


def _eeg(rate=256.0, epochs=E, seed=0, amp=20.0):
  """EEG-like 1/f noise plus alpha, std ~ amp uV."""
  rng = np.random.default_rng(seed)
  n = int(epochs * 30 * rate)
  spec = np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1 / rate), 0.5) ** 0.5
  x = np.fft.irfft(spec, n)
  x += 0.5 * x.std() * np.sin(2 * np.pi * 10 * np.arange(n) / rate)
  return amp * x / x.std()


def _sig(label, rate, data, unit="uV"):
  return edf.Signal(label, rate, unit, np.asarray(data, dtype=np.float64))


def _epoch(x, rate, k):
  return slice(int(k * 30 * rate), int((k + 1) * 30 * rate))


def _flags(codes, name):
  return np.flatnonzero(codes & qc.BIT[name]).tolist()


def test_clean_signals_pass():
  for modality, x, rate in [("eeg", _eeg(), 256.0), ("eeg", _eeg(rate=200.0), 200.0),
                            ("eeg", 30 * np.sin(2 * np.pi * 10 * np.arange(E * 6000) / 200), 200.0),
                            ("resp_effort", np.sin(np.arange(E * 30 * 10) / 10 * 1.5), 10.0),
                            ("spo2", np.round(96 + np.random.default_rng(1).normal(0, 0.7, E * 30)), 1.0)]:
    codes = qc.check_raw(x, rate, modality, E)
    assert not codes.any(), (modality, qc.flag_counts(codes))


def test_flat_lines():
  rate = 256.0
  x = _eeg()
  x[_epoch(x, rate, 3)] = 7.0  # digital flat line
  x[_epoch(x, rate, 5)] = 0.05 * np.random.default_rng(2).standard_normal(7680)  # dead: 0.05 uV
  s = _epoch(x, rate, 8)
  x[s.start + 1000:s.start + 1000 + int(3 * rate)] = x[s.start + 1000]  # 3-s identical run
  codes = qc.check_raw(x, rate, "eeg", E)
  assert _flags(codes, "flat") == [3, 5, 8]
  # SpO2 may sit on one value for a long time: only > 10 min runs are flat.
  spo2 = np.full(40 * 30, 97.0)
  spo2[:30] = 96.0
  assert not qc.check_raw(spo2[:540], 1.0, "spo2", 18).any()
  assert _flags(qc.check_raw(spo2, 1.0, "spo2", 40), "flat") == list(range(1, 40))


def test_clipping_and_disconnection():
  rate = 256.0
  x = np.clip(_eeg(amp=40.0), -250, 250)  # natural peaks never reach the rails
  assert not qc.check_raw(x, rate, "eeg", E).any()
  x[_epoch(x, rate, 2)] = np.clip(x[_epoch(x, rate, 2)] * 4, -250, 250)  # ~12 % clipped
  s = _epoch(x, rate, 6)
  x[s] = np.where(np.arange(7680) % 512 < 256, 250.0, -250.0)  # rail to rail: disconnected
  codes = qc.check_raw(x, rate, "eeg", E)
  assert _flags(codes, "clipped") == [2, 6]
  assert _flags(codes, "disconnected") == [6]
  # With a known physical range, one epoch at its rail is enough.
  y = _eeg(amp=40.0)
  y[_epoch(y, rate, 1)][:1000] = 300.0
  assert _flags(qc.check_raw(y, rate, "eeg", E, rails=(-300.0, 300.0)), "clipped") == [1]


def test_nonfinite_and_missing_data():
  rate = 200.0
  x = _eeg(rate=rate)
  x[_epoch(x, rate, 4)][100:200] = np.nan  # EDF+D gap
  x[_epoch(x, rate, 9)][5] = np.inf
  codes = qc.check_raw(x[:int(17.5 * 30 * rate)], rate, "eeg", E)  # record stops in epoch 17
  assert _flags(codes, "nonfinite") == [4, 9]
  assert _flags(codes, "missing") == [17, 18, 19]
  assert not codes[[0, 1, 2, 3, 5, 16]].any()


def test_implausible_ranges():
  spo2 = np.full(E * 30, 96.0)
  spo2[65:70] = 0.0  # probe off: 0 %
  spo2[400] = 127.0  # oximeter error code
  assert _flags(qc.check_raw(spo2, 1.0, "spo2", E), "range") == [2, 13]
  hr = np.full(E * 30, 60.0)
  hr[100:110] = 250.0
  assert _flags(qc.check_raw(hr, 1.0, "heart_rate", E), "range") == [3]
  rate = 128.0
  y = _eeg(rate=rate)
  y[_epoch(y, rate, 7)] = 1500 * np.sin(np.arange(3840) / 5)  # sustained > 1000 uV
  y[_epoch(y, rate, 9)][:64] = 5000.0  # half a second: not sustained
  assert _flags(qc.check_amplitude(y, rate, "eeg", E), "amplitude") == [7]


def test_sampling_rate_problems():
  assert qc.check_rate(256.0, "eeg") is None
  for bad in (0.0, -1.0, float("nan"), float("inf"), None):
    assert "invalid sampling rate" in qc.check_rate(bad, "eeg")
  assert "below" in qc.check_rate(32.0, "eeg")
  assert qc.check_rate(1.0, "spo2") is None
  h = harmonise.harmonise({("eeg", "c4_m1"): _sig("C4", 32.0, _eeg(rate=32.0)),
                           ("eeg", "c3_m2"): _sig("C3", 0.0, np.ones(10))}, E, ["eeg"])
  assert [q.status for q in h.qc] == ["masked", "masked"]
  assert "below" in h.qc[0].reasons[0] and "invalid" in h.qc[1].reasons[0]
  assert not h.present["eeg"].any() and not h.signals["eeg"].any()


def test_harmonise_masks_bad_epochs_and_channels():
  rate = 256.0
  good = _eeg(seed=1)
  bad_epochs = _eeg(seed=2)
  bad_epochs[_epoch(bad_epochs, rate, 3)] = np.nan
  bad_epochs[_epoch(bad_epochs, rate, 4)] = 3.0
  dead = _eeg(seed=3)
  dead[:int(12 * 30 * rate)] = 0.0  # disconnected for 12 of 20 epochs
  spo2 = np.full(E * 30, 95.0)
  spo2[300:310] = 0.0
  h = harmonise.harmonise({("eeg", "c4_m1"): _sig("C4-M1", rate, good),
                           ("eeg", "c3_m2"): _sig("C3-M2", rate, bad_epochs),
                           ("eog", "e1"): _sig("E1", rate, dead),
                           ("spo2", "spo2"): _sig("SpO2", 1.0, spo2, "%")},
                          E, ["eeg", "eog", "spo2"])
  status = {(q.modality, q.channel): q.status for q in h.qc}
  assert status == {("eeg", "c4_m1"): "ok", ("eeg", "c3_m2"): "ok", ("eog", "e1"): "masked",
                    ("eog", "e2"): "absent", ("spo2", "spo2"): "ok"}
  m = h.epoch_mask["eeg"]
  assert m.shape == (E, 2) and m[:, 0].all()
  assert np.flatnonzero(~m[:, 1]).tolist() == [3, 4]
  sig = h.signals["eeg"].reshape(2, E, 3840)
  assert np.isfinite(h.signals["eeg"]).all()
  assert not sig[1, [3, 4]].any() and sig[1, [2, 5]].std() > 0.3  # zeroed only where masked
  assert not h.present["eog"].any() and not h.signals["eog"].any()
  assert "flat" in h.qc[2].reasons[0]
  assert np.flatnonzero(~h.epoch_mask["spo2"][:, 0]).tolist() == [10]
  # Normalisation statistics come from usable epochs only.
  assert h.stats["eeg"]["method"] == ["robust", "robust"]
  assert 10 < h.stats["eeg"]["scale"][1] < 30
  assert h.stats["spo2"]["center"] == [95.0]


def test_heart_rate_derived_from_ecg_when_not_recorded():
  from tests.test_signal import synthetic_ecg
  ecg, beats = synthetic_ecg(duration_s=E * 30, rate=256.0)
  ecg[int(15 * 30 * 256):int(16 * 30 * 256)] = 0.0  # ECG lead off for one epoch
  signals = {("ecg", "ecg"): _sig("ECG", 256.0, ecg, "mV")}
  h = harmonise.harmonise(signals, E, ["heart_rate"])
  hr_qc = h.qc[0]
  assert hr_qc.status == "ok" and hr_qc.source.startswith("derived:ecg")
  mask = h.epoch_mask["heart_rate"][:, 0]
  assert not mask[15] and mask[1:15].all() and mask[17:].all()
  bpm = h.signals["heart_rate"][0].reshape(E, 120)[mask] * 15 + 65  # undo fixed scaling
  true_bpm = 60 / np.diff(beats).mean()
  assert abs(np.median(bpm) - true_bpm) < 1.0
  # The beats behind it are handed on (features reuse them): none inside the lead-off epoch.
  assert h.r_peaks is not None and not ((h.r_peaks >= 15 * 30) & (h.r_peaks < 16 * 30)).any()
  assert abs(len(h.r_peaks) - ((beats < 15 * 30) | (beats >= 16 * 30)).sum()) <= 3
  assert h.line_freq == 50.0
  # A direct heart-rate channel wins; an unusable one falls back to the ECG.
  oximeter_hr = 70.0 + np.round(2 * np.sin(np.arange(E * 30) / 20))
  direct = _sig("HR", 1.0, oximeter_hr, "bpm")
  h = harmonise.harmonise({**signals, ("heart_rate", "hr"): direct}, E, ["heart_rate"])
  assert h.qc[0].source == "HR" and h.epoch_mask["heart_rate"].all()
  np.testing.assert_allclose(h.signals["heart_rate"][0, ::4], (oximeter_hr - 65) / 15, atol=1e-6)
  broken = _sig("HR", 1.0, np.zeros(E * 30), "bpm")
  h = harmonise.harmonise({**signals, ("heart_rate", "hr"): broken}, E, ["heart_rate"])
  assert h.qc[0].source.startswith("derived") and "HR masked" in h.qc[0].reasons[0]


def test_length_mismatch_and_recording_verdict():
  assert qc.check_lengths(960, 961) == qc.LengthCheck(960, 1, None, False)
  lc = qc.check_lengths(960, 1000)
  assert lc.n_epochs == 960 and not lc.fatal and "overrun" in lc.note
  lc = qc.check_lengths(960, 400)
  assert lc.n_epochs == 400 and lc.fatal and "stop short" in lc.note
  ok = [qc.ChannelQC("eeg", "c4_m1", status="ok"), qc.ChannelQC("ecg", "ecg", status="masked")]
  stages = np.array([0, 1, 2, -1])
  assert qc.recording_verdict(ok, duration_s=8 * 3600, stages=stages) == ("ok", [])
  verdict, reasons = qc.recording_verdict(
      ok[1:], duration_s=1800, stages=-np.ones(4), lengths=lc, required=("eeg",))
  assert verdict == "skip"
  assert [r.split(":")[0].split(" ")[0] for r in reasons] == [
      "too", "length", "no", "no", "required"]
  assert qc.recording_verdict(ok, duration_s=1800,
                              config=qc.QCConfig(min_duration_s=600))[0] == "ok"


def test_write_qc_report(tmp_path):
  rate = 256.0
  x = _eeg()
  x[_epoch(x, rate, 0)] = 0.0
  h = harmonise.harmonise({("eeg", "c4_m1"): _sig("C4-M1", rate, x)}, E, ["eeg", "spo2"])
  verdict, reasons = qc.recording_verdict(h.qc, duration_s=E * 30)
  rows = [qc.report_row("rec-2", h.qc, verdict, reasons, E, notes=["unmatched: LIGHT"],
                        epoch_mask=h.epoch_mask),
          qc.error_row("rec-1", "cannot read as EDF/BDF")]
  csv_path, json_path = qc.write_qc_report(rows, tmp_path / "out")
  data = json.loads(json_path.read_text())
  assert data["summary"] == {"recordings": 2, "ok": 0, "skipped": 2}
  rec = data["recordings"][1]
  assert rec["recording_id"] == "rec-2" and rec["verdict"] == "skip"
  assert rec["reasons"] == ["too short: 0.17 h < 1.00 h"]
  assert rec["channels"]["eeg"]["c4_m1"]["epoch_flags"] == {"flat": 1}
  assert rec["channels"]["eeg"]["c3_m2"]["status"] == "absent"
  assert rec["masked_fraction"] == {"eeg": 0.05, "spo2": 1.0}  # epochs without any usable eeg
  assert rec["channels"]["eeg"]["c4_m1"]["masked_fraction"] == 0.05
  with open(csv_path, newline="") as f:
    table = list(csv.DictReader(f))
  assert [r["recording_id"] for r in table] == ["rec-1", "rec-2"]
  assert table[0]["reasons"] == "cannot read as EDF/BDF"
  assert table[1]["eeg_channels"] == "c4_m1:ok c3_m2:absent"
  assert float(table[1]["eeg_masked_fraction"]) == 0.05
  assert table[1]["notes"] == "unmatched: LIGHT"
