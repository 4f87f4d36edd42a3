"""The hard synthetic benchmark: site chains are applied, the planted confound follows the stages."""

import numpy as np

from data_prep import synthetic


def _night(j: int, hard: bool):
  site = synthetic.make_site(j, hard=hard)
  subject = synthetic.make_subject(1, site, np.random.default_rng([0, 1, 0]), ())
  return site, subject, synthetic.simulate_night(subject, site, 0.5, np.random.default_rng([0, 1, 1]))


def _band_power(x, fs, f0):
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
  freqs = np.fft.rfftfreq(len(x), 1 / fs)
  return spec[np.abs(freqs - f0) < 0.5].sum() / spec[(freqs > 1) & (freqs < 30)].sum()


def test_hard_site_b_artefact_tracks_n2_and_ages_follow_the_site():
  site, subject, night = _night(1, hard=True)
  assert site.hard is synthetic.HARD_SITES[1] and 20 <= subject.age < 50
  _, _, plain = _night(1, hard=False)
  assert plain.subject.age != subject.age or plain.signals["EMG"].std() != night.signals["EMG"].std()
  fs = site.montage["EEG3"].fs
  eeg = night.signals["EEG3"].reshape(-1, 30 * fs)
  power = np.array([_band_power(e, fs, 13.0) for e in eeg])
  n2 = night.hypnogram[:len(power)] == 2
  # the 13 Hz common-mode artefact is on in ~80 % of N2 epochs and ~10 % of the others
  assert np.median(power[n2]) > 3 * np.median(power[~n2])
  # the same artefact rides on the ECG at the same time (shared across modalities)
  ecg = night.signals["EKG"].reshape(-1, 30 * site.montage["EKG"].fs)
  ecg_power = np.array([_band_power(e, site.montage["EKG"].fs, 13.0) for e in ecg])
  assert np.corrcoef(power, ecg_power)[0, 1] > 0.5


def test_standard_cohort_is_unchanged_by_the_option():
  a = synthetic.make_site(0)
  assert a.hard is None and synthetic.make_site(0, hard=False) == a
