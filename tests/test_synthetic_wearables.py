"""The synthetic generator's wearable channels (PPG, wrist actigraphy): off by default, seeded, and
physiological: one pulse per heartbeat, quiet wrists in deep sleep."""

import numpy as np
import pytest
from scipy import signal as sps

from data_prep import physiology, render, synthetic

W, N1, N2, N3, REM = range(5)
HOURS = 1.5


@pytest.fixture(scope="module")
def latent():
  """A 30-year-old's night (N3 and wake both present) and its renderer."""
  rng = np.random.default_rng(5)
  hyp = physiology.simulate_hypnogram(int(HOURS * 120), 30, rng)
  lat = physiology.simulate_latent(hyp, 30, True, 31.0, 20.0, rng)
  return lat, render.Renderer(lat, 128.0)


def _per_epoch(x, fs):
  n = len(x) // int(30 * fs)
  return x[: n * int(30 * fs)].reshape(n, int(30 * fs))


def test_off_by_default_and_other_channels_unchanged():
  subj = synthetic.SubjectSpec("sub-9003", "site-a-9003", "site-a", 60, "M", 30.0, 20.0, ())
  plain = synthetic.simulate_night(subj, synthetic.make_site(0), 0.5, np.random.default_rng(3))
  worn = synthetic.simulate_night(subj, synthetic.make_site(0, wearables=True), 0.5,
                                  np.random.default_rng(3))
  assert "Pleth" not in plain.signals and "Accel" not in plain.signals
  assert set(worn.signals) == set(plain.signals) | {"Pleth", "Accel"}
  for label, x in plain.signals.items():
    assert x.tobytes() == worn.signals[label].tobytes(), label
  again = synthetic.simulate_night(subj, synthetic.make_site(0, wearables=True), 0.5,
                                   np.random.default_rng(3))
  for label in ("Pleth", "Accel"):
    assert worn.signals[label].tobytes() == again.signals[label].tobytes(), label
  assert worn.rates["Pleth"] == 64 and worn.rates["Accel"] == 32


def test_hard_sites_take_wearables_too():
  site = synthetic.make_site(1, hard=True, wearables=True)
  assert site.hard is not None and {"Pleth", "Accel"} <= set(site.montage)


def test_pulse_rate_equals_heart_rate_and_follows_the_r_peak(latent):
  """Per still sleep epoch, 60 / mean pulse interval vs the generator's mean heart rate. The beats
  integrate that rate (plus zero-mean sinus arrhythmia), so the only errors are the sample grid
  (1/64 s per peak, < 0.1 bpm over an epoch's span) and a partial beat at the epoch edges
  (< 1 beat / 30 s ~ 2 bpm at worst, ~0.5 bpm typical): the median error must stay under 1 bpm and
  every still epoch within 3 bpm."""
  lat, rnd = latent
  fs = 64
  x = rnd.ppg(fs, 250)
  peaks, _ = sps.find_peaks(x, distance=int(0.33 * fs), prominence=0.3)
  t = peaks / fs
  move = _per_epoch(rnd._movement(fs)[0], fs).max(1)  # pylint: disable=protected-access
  hr = _per_epoch(lat.env["hr"], 1).mean(1)
  err = []
  for e in np.flatnonzero((lat.hyp[: len(move)] > 0) & (move < 0.01)):
    te = t[(t >= 30 * e) & (t < 30 * e + 30)]
    err.append(60 / np.mean(np.diff(te)) - hr[e])
  assert len(err) > 60
  assert np.median(np.abs(err)) < 1.0 and np.max(np.abs(err)) < 3.0
  r, _ = rnd._beats(250)  # pylint: disable=protected-access
  lag = t[:, None] - r[None, :]
  lag = np.where(lag > 0, lag, np.inf).min(1)
  assert 0.2 <= np.median(lag) <= 0.3  # pulse transit time to the periphery


def test_pulse_amplitude_drops_after_arousals(latent):
  lat, rnd = latent
  fs = 64
  x = rnd.ppg(fs, 250)
  peaks, props = sps.find_peaks(x, distance=int(0.33 * fs), prominence=0.3)
  t, amp = peaks / fs, props["prominences"]
  gross = rnd._movement(fs)[0]  # pylint: disable=protected-access
  still = lambda a: gross[int((a - 15) * fs): int((a + 8) * fs)].max() < 0.01  # noqa: E731
  onsets = [e.onset_s for e in lat.events if e.kind == "arousal" and still(e.onset_s)]  # no motion
  before = [np.median(amp[(t > a - 15) & (t < a - 2)]) for a in onsets]
  after = [np.median(amp[(t > a + 4) & (t < a + 8)]) for a in onsets]
  assert len(onsets) > 5
  assert np.nanmedian(np.array(after) / np.array(before)) < 0.85  # vasoconstriction


def test_actigraphy_quiet_in_deep_sleep_and_rem_active_in_wake(latent):
  lat, rnd = latent
  fs = 32
  a = rnd.actigraphy(fs)
  assert a.min() >= 0 and abs(np.median(a) - 1.0) < 0.01  # a still wrist reads 1 g
  activity = np.abs(_per_epoch(a, fs) - 1.0).mean(1)  # ENMO-like, per epoch
  hyp = lat.hyp[: len(activity)]
  assert (hyp == N3).sum() > 5 and (hyp == W).sum() > 5
  wake, n3 = np.median(activity[hyp == W]), np.median(activity[hyp == N3])
  assert n3 < 0.1 * wake
  if (hyp == REM).sum() > 5:
    assert np.median(activity[hyp == REM]) < 0.2 * wake  # REM atonia
  sec = np.abs(_per_epoch(a, fs).reshape(-1, fs) - 1.0).mean(1)  # per second
  aro = np.array([sec[int(e.onset_s): int(e.onset_s) + 3].mean() for e in lat.events
                  if e.kind == "arousal" and e.onset_s + 3 < len(sec)])
  assert np.median(aro) > 3 * np.median(sec[np.repeat(hyp, 30) == N2])  # bursts at arousals
