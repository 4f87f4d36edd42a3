"""Signal renderer behind :mod:`data_prep.synthetic`.

:class:`Renderer` turns a :class:`data_prep.physiology.Latent` night into channels
at any sampling rate: band-limited Gaussian noise drawn in the frequency domain
(only the bins a band occupies), transients placed by ``np.bincount``, and
channel-specific waveforms, all vectorised numpy.  Noise streams are seeded from
the latent seed, the component name and the rate, so a channel renders the same
whatever else is rendered.  Amplitudes as in :mod:`data_prep.physiology`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import scipy.fft
from scipy import signal as sps

from .physiology import BANDS, Latent


def _spectral_noise(rng, n, fs, gain):
  """Gaussian noise of unit variance whose amplitude spectrum is ``gain``.

  ``gain`` is ``(fn, f_lo, f_hi)``: only the bins inside the support are drawn
  and evaluated, so narrow-band components are cheap.  The variance is
  normalised exactly from the spectrum (Parseval), no pass over the signal.
  """
  fn, f_lo, f_hi = gain
  nf = n // 2 + 1
  i0 = max(1, int(np.ceil(f_lo * n / fs)))
  i1 = min(nf - 1, int(np.floor(f_hi * n / fs)) + 1)  # exclude DC and Nyquist bins
  spec = np.zeros(nf, complex)
  if i1 > i0:
    spec[i0:i1] = rng.standard_normal(2 * (i1 - i0)).view(complex)
    spec[i0:i1] *= fn(np.arange(i0, i1) * fs / n)
  var = 2.0 * np.vdot(spec, spec).real / (n * n)
  if var > 0:
    spec /= np.sqrt(var)
  return scipy.fft.irfft(spec, n)


def _band(lo0, lo1, hi0, hi1):
  """Raised-cosine band-pass gain: 0 below lo0, 1 on [lo1, hi0], 0 above hi1."""

  def g(f):
    up = np.clip((f - lo0) / (lo1 - lo0), 0, 1)
    dn = np.clip((hi1 - f) / (hi1 - hi0), 0, 1)
    return np.sin(np.pi / 2 * up) ** 2 * np.sin(np.pi / 2 * dn) ** 2

  return g, lo0, hi1


def _gauss(mu, sd):
  return (lambda f: np.exp(-0.5 * ((f - mu) / sd) ** 2)), max(0.0, mu - 4 * sd), mu + 4 * sd


def _pink(lo, hi, expo=0.5):
  band = _band(lo * 0.6, lo, hi, hi * 1.1)[0]
  return (lambda f: band(f) / np.maximum(f, lo) ** expo), lo * 0.6, hi * 1.1


def _render(n, fs, times, amps, kernel, offset=0):
  """Sum of ``amps[i] * kernel`` placed at ``times[i]`` s (kernel sample ``offset`` at the time)."""
  times, amps = np.asarray(times, float), np.asarray(amps, float)
  if len(times) == 0:
    return np.zeros(n)
  k = np.arange(len(kernel))
  idx = (np.round(times * fs).astype(np.int64) - offset)[:, None] + k
  w = amps[:, None] * kernel[None, :]
  ok = (idx >= 0) & (idx < n)
  return np.bincount(idx[ok], weights=w[ok], minlength=n)


def _sawtooth(phase, width):
  frac = np.mod(phase / (2 * np.pi), 1.0)
  return np.where(frac < width, -1 + 2 * frac / width, 1 - 2 * (frac - width) / (1 - width))


class Renderer:
  """Renders channels of a :class:`Latent` night at arbitrary sampling rates."""

  def __init__(self, lat: Latent, fs_latent: float):
    self.lat = lat
    self.fs = float(fs_latent)
    self.n = int(round(lat.n_sec * self.fs))
    self._cache = {}

  def _rng(self, name, fs):
    return np.random.default_rng(
        [self.lat.seed, sum(map(ord, name)) * 7919 + len(name), int(fs * 1000)]
    )

  def _env(self, name, n, fs):
    key = ("env", name, n)
    if key not in self._cache:
      x = self.lat.env[name]
      self._cache[key] = np.interp(np.arange(n) / fs, np.arange(len(x)) + 0.5, x)
    return self._cache[key]

  def _noise(self, name, gain_fn, n=None, fs=None):
    n, fs = n or self.n, fs or self.fs
    key = ("noise", name, n)
    if key not in self._cache:
      self._cache[key] = _spectral_noise(self._rng(name, fs), n, fs, gain_fn)
    return self._cache[key]

  # ----------------------------------------------------------------- EEG family (latent rate)
  def _cortex(self):
    if "cortex" in self._cache:
      return self._cache["cortex"]
    fs, n, lat = self.fs, self.n, self.lat
    nyq = fs / 2
    gains = {
        "pink": _pink(0.3, min(45, 0.9 * nyq), 0.5),
        "sdelta": _band(0.25, 0.45, 1.2, 1.8),
        "fdelta": _band(1.2, 1.8, 3.5, 4.5),
        "theta": _gauss(6.0, 1.0),
        "alpha": _gauss(lat.alpha_hz, 0.7),
        "sigma": _gauss(13.5, 1.0),
        "beta": _pink(17, min(30, 0.9 * nyq), 0.3),
    }
    parts = {b: self._env(b, n, fs) * self._noise("eeg_" + b, gains[b]) for b in BANDS}
    rng_saw = self._rng("sawtooth", fs)
    # spindles: narrow-band 12-15 Hz carrier under Hann envelopes of 0.6/1.0/1.6 s
    st, sa, sd = lat.points["spindle"]
    spenv = np.zeros(n)
    for d in (0.6, 1.0, 1.6):
      m = sd == d
      spenv += _render(n, fs, st[m], sa[m], np.hanning(int(d * fs)))
    carrier = self._noise("spindle", _gauss(13.0, 0.6))
    spind = spenv * carrier
    # K-complexes: sharp negative wave followed by a slower positive one
    kt = np.arange(int(1.5 * fs)) / fs
    kern = -np.exp(-0.5 * ((kt - 0.35) / 0.1) ** 2) + 0.55 * np.exp(-0.5 * ((kt - 0.8) / 0.2) ** 2)
    kc = _render(n, fs, *lat.points["kcomplex"], kern, offset=int(0.35 * fs))
    # sawtooth-wave trains in REM (2-3 Hz)
    sw_t, sw_a, sw_d = lat.points["sawtooth"]
    saw = np.zeros(n)
    for t0, a, d in zip(sw_t, sw_a, sw_d):
      i0, i1 = int(t0 * fs), min(n, int((t0 + d) * fs))
      tt = np.arange(i1 - i0) / fs
      f0 = rng_saw.uniform(2.2, 3.2)
      saw[i0:i1] = (
          a * np.hanning(i1 - i0) * _sawtooth(2 * np.pi * f0 * tt + rng_saw.uniform(0, 6.3), 0.15)
      )
    shared = sum(parts.values())
    self._cache["cortex"] = (shared, spind, kc, saw, parts)
    return self._cache["cortex"]

  def eeg(self, side: str):
    shared, spind, kc, saw, parts = self._cortex()
    own = (
        0.45
        * self._env("pink", self.n, self.fs)
        * self._noise("eeg_own_" + side, _pink(0.3, min(45, 0.45 * self.fs)))
    )
    w = 1.0 if side == "C4" else 0.9
    return shared + own + w * (spind + kc + saw)

  def eog(self, side: str):
    fs, n, lat = self.fs, self.n, self.lat
    shared, spind, kc, saw, parts = self._cortex()
    leak = 0.5 * (parts["sdelta"] + parts["fdelta"]) + 0.45 * kc + 0.3 * parts["theta"] + 0.3 * saw
    if "eye" not in self._cache:
      sem = self._env("sem", n, fs) * self._noise("sem", _band(0.05, 0.15, 0.5, 0.8))
      kt = np.arange(int(3 * fs)) / fs
      sac = _render(n, fs, *lat.points["saccade"], (1 - np.exp(-kt / 0.03)) * np.exp(-kt / 0.8))
      bt = np.arange(int(0.6 * fs)) / fs
      blink = _render(n, fs, *lat.points["blink"], np.exp(-0.5 * ((bt - 0.18) / 0.07) ** 2))
      self._cache["eye"] = sem + sac + blink
    sign = 1.0 if side == "L" else -1.0
    own = 3.0 * self._noise("eog_own_" + side, _pink(0.3, min(40, 0.45 * fs)))
    return leak + sign * self._cache["eye"] + own

  def emg(self):
    fs, n, lat = self.fs, self.n, self.lat
    env = self._env("emg", n, fs)
    bt = np.arange(int(0.3 * fs)) / fs
    tw = _render(n, fs, *lat.points["twitch"], np.hanning(len(bt)))
    mt = np.arange(int(2.0 * fs)) / fs
    mv = _render(n, fs, *lat.points["movement"], np.hanning(len(mt)))
    noise = self._noise("emg", _band(8, 12, 0.42 * fs, 0.5 * fs))
    x = (env + tw + mv) * noise + 0.3 * self._noise("emg_amp", _pink(1, 0.45 * fs))
    return x

  # ----------------------------------------------------------------- other modalities (own rate)
  def _phase(self, t):
    bp = self.lat.breath_phase
    return np.interp(t, np.arange(len(bp)), bp)

  def _beats(self, fs_ecg: float):
    """R-peak times (s) of the ECG rendered at `fs_ecg`, and that ECG's random stream after them:
    heart rate plus respiratory sinus arrhythmia, integrated into beat phase."""
    lat = self.lat
    t4 = np.arange(0, lat.n_sec, 0.25)
    hr = np.interp(t4, np.arange(lat.n_sec) + 0.5, lat.env["hr"]) + lat.env["rsa"][0] * np.sin(
        self._phase(t4)
    )
    rng = self._rng("ecg", fs_ecg)
    theta = np.cumsum(hr / 60 * 0.25) + rng.random()
    r = np.interp(np.arange(np.ceil(theta[0]), np.floor(theta[-1]) + 1), theta, t4)
    return np.r_[r[0] - 1.0, r, r[-1] + 1.0], rng

  def ecg(self, fs: float):
    lat = self.lat
    n = int(round(lat.n_sec * fs))
    r, rng = self._beats(fs)
    rr = np.diff(r, append=r[-1] + 1.0)
    t = np.arange(n) / fs
    kt = np.arange(-int(0.3 * fs), int(0.1 * fs) + 1) / fs
    pqrs = sum(
        a * np.exp(-0.5 * ((kt - mu) / sd) ** 2)
        for mu, sd, a in [
            (-0.17, 0.022, 0.12),
            (-0.028, 0.008, -0.12),
            (0.0, 0.010, 1.0),
            (0.03, 0.010, -0.25),
        ]
    )
    tk = np.arange(-int(0.2 * fs), int(0.2 * fs) + 1) / fs
    amp = rng.uniform(0.8, 1.4)
    x = _render(n, fs, r, np.ones(len(r)), pqrs, offset=int(0.3 * fs))
    x += _render(
        n,
        fs,
        r + 0.3 * np.sqrt(np.clip(rr, 0.3, 2.0)),
        np.full(len(r), 0.28),
        np.exp(-0.5 * (tk / 0.045) ** 2),
        offset=int(0.2 * fs),
    )
    ph = self._phase(t)
    x = amp * x * (1 + 0.08 * np.sin(ph)) + 0.05 * np.sin(ph + 1.0)
    return x + 0.01 * self._noise("ecg_noise", _pink(0.5, 0.45 * fs), n, fs)

  def respiration(self, which: str, fs: float):
    """which: thor | abdo | thermistor | pressure (arbitrary units, ~+-0.5)."""
    lat = self.lat
    n = int(round(lat.n_sec * fs))
    t = np.arange(n) / fs
    ph = self._phase(t)
    env = lambda k: np.interp(t, np.arange(lat.n_sec) + 0.5, lat.env[k])  # noqa: E731

    def vol(p):
      psi = np.mod(p / (2 * np.pi), 1.0)
      return np.where(
          psi < 0.4,
          0.5 - 0.5 * np.cos(np.pi * psi / 0.4),
          0.5 + 0.5 * np.cos(np.pi * (psi - 0.4) / 0.6),
      )

    drift = self._noise("drift_" + which, _band(0.005, 0.01, 0.05, 0.08), n, fs)
    noise = self._noise("rnoise_" + which, _pink(0.1, 0.45 * fs), n, fs)
    if which == "thor":
      return 0.45 * env("thor") * (vol(ph) - 0.5) + 0.05 * drift + 0.01 * noise
    if which == "abdo":
      return 0.4 * env("abdo") * (vol(ph + env("paradox")) - 0.5) + 0.05 * drift + 0.01 * noise
    if which == "thermistor":
      return 0.5 * env("flow") * (vol(ph - 0.6) - 0.5) + 0.02 * drift + 0.01 * noise
    psi = np.mod(ph / (2 * np.pi), 1.0)
    d = np.where(psi < 0.4, np.sin(np.pi * psi / 0.4), -0.67 * np.sin(np.pi * (psi - 0.4) / 0.6))
    d = np.minimum(d, env("cap"))
    return 0.4 * env("flow") * np.sign(d) * np.abs(d) ** 1.5 + 0.01 * noise

  # ----------------------------------------------------------------- wearables (own rate)
  def _movement(self, fs: float):
    """Body-movement envelopes (g, per sample at `fs`): (gross, micro). Gross movements move the
    sensor on the skin (PPG motion artefacts too): movements and position changes, limb movements
    (seen attenuated at the wrist), ongoing activity in wake scaled by eyes-open. Micro-activity
    (restlessness at arousals, REM twitches) shows in actigraphy only."""
    lat = self.lat
    n = int(round(lat.n_sec * fs))
    rng = self._rng("movement", fs)
    mt, ma = lat.points["movement"]
    shifts = np.flatnonzero(np.diff(lat.position)) + 1.0  # turning over
    lm = np.array([e.onset_s for e in lat.events if e.kind == "limb_movement"])
    tw = lat.points["twitch"][0]
    k2 = np.hanning(int(2.0 * fs))
    env = _render(n, fs, mt, 0.01 * np.asarray(ma), k2)  # ~0.1-0.3 g per gross movement
    env += _render(n, fs, shifts, rng.uniform(0.3, 0.6, len(shifts)), np.hanning(int(4.0 * fs)))
    env += _render(n, fs, lm, rng.uniform(0.02, 0.06, len(lm)), k2)
    micro = _render(n, fs, tw, rng.uniform(0.003, 0.01, len(tw)), np.hanning(int(0.3 * fs)))
    t, sec = np.arange(n) / fs, np.arange(lat.n_sec) + 0.5
    per_s = lambda k: np.interp(t, sec, lat.env[k])  # noqa: E731
    wake = np.interp(t, sec, np.repeat((lat.hyp == 0).astype(float), 30))
    return env + wake * (0.02 + 0.12 * per_s("eo")), micro + 0.03 * per_s("arousal")

  def actigraphy(self, fs: float):
    """Wrist acceleration magnitude |g + a| (g): three axes of 0.3-5 Hz movement noise under the
    movement envelope, plus 2 mg sensor noise. Quiet in N3 and REM (atonia), bursts at arousals and
    limb movements, activity in wake: what actigraphic sleep/wake scoring (Cole et al. 1992,
    Sleep 15:461) relies on."""
    n = int(round(self.lat.n_sec * fs))
    env = sum(self._movement(fs))
    axes = [env * self._noise(f"accel_{a}", _band(0.2, 0.3, 5.0, 0.45 * fs), n, fs)
            for a in "xyz"]
    axes = [a + 0.002 * self._noise(f"accel_noise_{i}", _band(0.1, 0.2, 0.4 * fs, 0.45 * fs), n, fs)
            for i, a in enumerate(axes)]
    return np.sqrt((1.0 + axes[0]) ** 2 + axes[1] ** 2 + axes[2] ** 2)

  def ppg(self, fs: float, fs_ecg: float):
    """Photoplethysmogram (a.u.): one pulse per heartbeat of the ECG rendered at `fs_ecg`, arriving
    a pulse transit time after the R peak (~0.2-0.3 s to the periphery; Mukkamala 2015, IEEE TBME
    62:1879). Pulse amplitude drops with sympathetic vasoconstriction at arousals and at the
    arousals ending apneas (Delessert 2010, Sleep 33:1687; Haba-Rubio 2005, Sleep Med 6:23) and
    with desaturation; breathing modulates the baseline; movement adds large artefacts."""
    lat = self.lat
    n = int(round(lat.n_sec * fs))
    rng = self._rng("ppg", fs)
    r, _ = self._beats(fs_ecg)
    ptt = rng.uniform(0.2, 0.3)
    sec = np.arange(lat.n_sec) + 0.5
    aro = np.interp(r - 3.0, sec, lat.env["arousal"])  # vasoconstriction lags the arousal ~3 s
    desat = np.interp(r, sec, np.clip(np.median(lat.spo2) - lat.spo2, 0, None))
    amp = np.clip(1.0 - 0.5 * aro - 0.04 * desat, 0.2, None)
    amp *= np.exp(0.05 * rng.standard_normal(len(r)))  # beat-to-beat amplitude variability
    kt = np.arange(int(0.7 * fs)) / fs  # systolic peak and the diastolic (reflected) shoulder
    pulse = (np.exp(-0.5 * ((kt - 0.12) / 0.05) ** 2)
             + 0.3 * np.exp(-0.5 * ((kt - 0.34) / 0.08) ** 2))
    x = _render(n, fs, r + ptt, amp, pulse, offset=int(0.12 * fs))
    t = np.arange(n) / fs
    x += 0.1 * np.sin(self._phase(t))  # respiratory-induced baseline variation
    art = self._movement(fs)[0] * self._noise("ppg_motion", _band(0.3, 0.5, 4.0, 6.0), n, fs)
    return x + 8.0 * art + 0.02 * self._noise("ppg_noise", _pink(0.5, 0.45 * fs), n, fs)

  def per_second(self, arr, fs: float):
    n = int(round(self.lat.n_sec * fs))
    return np.asarray(arr, float)[np.minimum((np.arange(n) / fs).astype(int), self.lat.n_sec - 1)]


def resample_to(x: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
  """Polyphase resampling between (rational) sampling rates."""
  if fs_from == fs_to:
    return x
  fr = Fraction(fs_to / fs_from).limit_denominator(1000)
  return sps.resample_poly(x, fr.numerator, fr.denominator)
