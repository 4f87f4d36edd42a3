"""Signal processing for harmonisation: resampling, filters, normalisation, R peaks, heart rate.

Everything is vectorised numpy/scipy on whole nights (no per-sample Python loops), so a 9-modality
8-hour night is processed in a couple of seconds on one core.

- :func:`resample`: anti-aliased polyphase resampling for any rate ratio (200, 256, 250, 125, 100,
  10, 1 Hz ... -> canonical rates); linear interpolation for level signals (SpO2, heart rate) and for
  rates without a small rational ratio (e.g. 199.98 Hz), after an anti-alias low-pass.
- :func:`detect_line_frequency`: which mains frequency (50 or 60 Hz) a recording carries.
- :func:`filter_sos` / :func:`apply_filter`: per-modality zero-phase band-pass (+ mains notch), from
  the modality's record (`sleepjax.modalities`: `band_hz`, `notch`).
- :func:`robust_stats`: median / IQR normalisation statistics over usable samples.
- :func:`detect_r_peaks`: QRS detection after Elgendi et al. (2013), "Fast QRS detection with an
  optimized knowledge-based method: evaluation on 11 standard ECG databases", PLoS ONE 8(9):e73557
  (band-pass 8-20 Hz, squaring, two moving averages of 97 ms and 611 ms, offset beta = 0.08,
  blocks at least one QRS wide), with global polarity detection, a refractory period and
  sub-sample peak refinement.
- :func:`heart_rate_from_beats`: instantaneous heart rate (bpm) on a regular grid from beat times,
  physiologic limits 30-200 bpm, ectopic/missed-beat rejection, gaps masked.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from sleepjax.modalities import CANONICAL

LINE_FREQUENCIES = (50.0, 60.0)
NOTCH_Q = 30.0  # -3 dB width = f0 / Q (1.7 Hz at 50 Hz)
_MAX_UPDOWN = 20_000  # largest polyphase up/down factor before falling back to interpolation


# ------------------------------------------------------------------------------------ resampling
def _rational(rate_in: float, rate_out: float) -> tuple[int, int] | None:
  """(up, down) with rate_in * up / down == rate_out to 1 ppm, or None."""
  ratio = (Fraction(rate_out).limit_denominator(10_000)
           / Fraction(rate_in).limit_denominator(10_000)).limit_denominator(_MAX_UPDOWN)
  up, down = ratio.numerator, ratio.denominator
  if max(up, down) > _MAX_UPDOWN or abs(rate_in * up / down - rate_out) > 1e-6 * rate_out:
    return None
  return up, down


def _lowpass(x: np.ndarray, cutoff: float, rate: float) -> np.ndarray:
  sos = _butter(8, cutoff / rate, "lowpass")
  return sps.sosfiltfilt(sos, x)


@functools.lru_cache(maxsize=256)
def _butter(order: int, wn, btype: str) -> np.ndarray:
  """Butterworth SOS with cutoffs as fractions of the sampling rate (cached)."""
  return sps.butter(order, np.asarray(wn) * 2.0, btype, output="sos")


def resample(x: np.ndarray, rate_in: float, rate_out: float, *, level: bool = False) -> np.ndarray:
  """Resamples `x` from `rate_in` to `rate_out` Hz; output length round(len(x) * rate_out / rate_in).

  Waveforms (`level=False`) go through scipy's polyphase FIR (Kaiser-windowed anti-alias filter at
  the lower Nyquist) whenever the ratio is a fraction with terms <= 20000, which covers every rate
  seen in PSG; otherwise an 8th-order zero-phase low-pass at 0.45 * rate_out (when decimating) and
  linear interpolation onto the exact output grid. Level signals (`level=True`: SpO2, heart rate)
  are interpolated linearly (exact at their own samples, no ringing on steps) after a boxcar average
  over the decimation factor when decimating.
  """
  x = np.asarray(x)
  if not (np.isfinite(rate_in) and rate_in > 0 and rate_out > 0):
    raise ValueError(f"invalid sampling rates {rate_in} -> {rate_out}")
  if rate_in == rate_out or len(x) == 0:
    return x
  n_out = int(round(len(x) * rate_out / rate_in))
  if not level:
    updown = _rational(rate_in, rate_out)
    if updown is not None:
      y = sps.resample_poly(x, *updown, padtype="line")
      return _fit_length(y, n_out)
    if rate_out < rate_in:
      x = _lowpass(x, 0.45 * rate_out, rate_in)
  elif rate_out < rate_in:
    width = int(round(rate_in / rate_out))
    if width > 1:
      x = ndimage.uniform_filter1d(x, width, mode="nearest")
  t_out = np.arange(n_out) * (rate_in / rate_out)  # output times in input samples
  return np.interp(t_out, np.arange(len(x)), x).astype(x.dtype, copy=False)


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
  if len(y) >= n:
    return y[:n]
  return np.pad(y, (0, n - len(y)), mode="edge")


# -------------------------------------------------------------------------------------- filters
def detect_line_frequency(signals, candidates=LINE_FREQUENCIES, min_ratio: float = 4.0,
                          n_segments: int = 32, segment_s: float = 2.0) -> float | None:
  """The mains frequency present in `signals` (iterable of (x, rate)), or None if none stands out.

  For each signal whose Nyquist leaves room above a candidate, `n_segments` Hann-windowed segments
  of `segment_s` seconds spread over the record are averaged into a power spectrum; the score of a
  candidate is its peak power over the median power 2-6 Hz on either side. The candidate with the
  highest score across signals wins if that score is at least `min_ratio` (6 dB).
  """
  best, best_f = 0.0, None
  for x, rate in signals:
    x = np.asarray(x)
    seg = int(round(segment_s * rate))
    if seg < 16 or len(x) < seg:
      continue
    starts = np.linspace(0, len(x) - seg, min(n_segments, len(x) // seg)).astype(int)
    block = x[starts[:, None] + np.arange(seg)]
    if not np.isfinite(block).all():
      block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
    block = block - block.mean(axis=1, keepdims=True)
    power = (np.abs(np.fft.rfft(block * np.hanning(seg), axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(seg, 1.0 / rate)
    for f in candidates:
      if f + 6.0 >= rate / 2:
        continue
      peak = power[np.abs(freqs - f) <= 0.5].max()
      side = (np.abs(freqs - f) >= 2.0) & (np.abs(freqs - f) <= 6.0)
      floor = np.median(power[side])
      score = peak / floor if floor > 0 else (np.inf if peak > 0 else 0.0)
      if score > best:
        best, best_f = score, f
  return best_f if best >= min_ratio else None


@functools.lru_cache(maxsize=256)
def filter_sos(modality: str, rate: float, line_freq: float | None = None) -> np.ndarray | None:
  """Zero-phase filter (SOS) for `modality` at `rate` Hz: band-pass `band_hz`, plus a mains notch.

  High-pass edges are 2nd order and low-pass edges 4th order (doubled by forward-backward
  filtering). The notch is added for modalities with `notch` when `line_freq` lies below Nyquist and inside
  or near the pass band (within twice the low-pass edge; beyond that the low-pass alone removes it
  by > 40 dB). Mains harmonics above the canonical Nyquist are removed by the resampler's anti-alias
  filter, so at canonical rates (50 and 60 Hz < 64 Hz) the notch is applied after decimation,
  folded into this one filter: half the samples, one filter pass. Where the mains frequency cannot
  be notched at the output rate (a configured rate below ~2x mains), `notch_before_resampling`
  says so and the caller notches at the native rate first.
  """
  spec = CANONICAL[modality]
  lo, hi = spec.band_hz or (None, None)
  nyq = rate / 2
  parts = []
  if lo is not None and lo < nyq:
    parts.append(_butter(2, lo / rate, "highpass"))
  if hi is not None and hi < 0.95 * nyq:
    parts.append(_butter(4, hi / rate, "lowpass"))
  if (line_freq and spec.notch and line_freq + 1.0 < nyq
      and (hi is None or line_freq < 2 * hi)):
    b, a = sps.iirnotch(line_freq, NOTCH_Q, fs=rate)
    parts.append(sps.tf2sos(b, a))
  return np.concatenate(parts) if parts else None


def apply_filter(x: np.ndarray, modality: str, rate: float,
                 line_freq: float | None = None) -> np.ndarray:
  """Zero-phase (sosfiltfilt) per-modality band-pass + notch; identity for unfiltered modalities."""
  sos = filter_sos(modality, float(rate), line_freq)
  if sos is None or len(x) <= 3 * (2 * len(sos) + 1):
    return x
  return sps.sosfiltfilt(sos, x)


def notch_before_resampling(modality: str, line_freq: float | None, rate_in: float,
                            rate_out: float) -> bool:
  """Whether mains must be notched at the native rate: it cannot be notched at `rate_out` (too
  close to or above its Nyquist) yet lies in the anti-alias filter's transition band, where
  decimation would only halve it and fold it back. Never the case at the canonical 128 Hz."""
  return bool(line_freq and CANONICAL[modality].notch and line_freq + 1.0 >= rate_out / 2
              and line_freq < 0.7 * rate_out and line_freq + 1.0 < rate_in / 2)


def notch(x: np.ndarray, rate: float, line_freq: float, q: float = NOTCH_Q) -> np.ndarray:
  """Zero-phase mains notch at `line_freq` (and nothing else)."""
  b, a = sps.iirnotch(line_freq, q, fs=rate)
  return sps.sosfiltfilt(sps.tf2sos(b, a), x)


# -------------------------------------------------------------------------------- normalisation
def robust_stats(x: np.ndarray, usable: np.ndarray | None = None, max_samples: int = 250_000
                 ) -> tuple[float, float]:
  """(median, IQR / 1.349) of `x` over `usable` samples (a regular subsample of at most about
  `max_samples`, for speed: quantile error ~ 0.1 % of the scale).

  The scale is the standard deviation a normal distribution with that IQR would have; 1.0 when
  degenerate (no usable samples or IQR ~ 0).
  """
  stride = max(1, len(x) // max_samples)
  sub = x[::stride] if usable is None else x[::stride][usable[::stride]]
  if sub.size == 0:
    return 0.0, 1.0
  q25, q50, q75 = np.percentile(sub, [25, 50, 75])
  scale = (q75 - q25) / 1.349
  return float(q50), float(scale) if scale > 1e-6 else 1.0


# ------------------------------------------------------------------------------------- R peaks
def _moving_mean(cs: np.ndarray, w: int) -> np.ndarray:
  """Centred moving mean of width `w` from the cumulative sum `cs` (len n + 1); shrinks at edges."""
  n = len(cs) - 1
  w = max(1, min(w, n))
  h = w // 2  # the window of sample i is [i - h, i - h + w), clipped to [0, n)
  out = np.empty(n)
  out[h:n - w + h + 1] = (cs[w:] - cs[:n - w + 1]) / w
  i = np.arange(h)
  out[:h] = cs[i - h + w] / (i - h + w)
  i = np.arange(n - w + h + 1, n)
  out[n - w + h + 1:] = (cs[n] - cs[i - h]) / (n - i + h)
  return out


def detect_r_peaks(ecg: np.ndarray, rate: float, *, beta: float = 0.08, w_qrs: float = 0.097,
                   w_beat: float = 0.611, refractory: float = 0.2,
                   band: tuple[float, float] = (8.0, 20.0), prefiltered: bool = False
                   ) -> np.ndarray:
  """R-peak times (seconds, sub-sample precision) in an ECG sampled at `rate` Hz (>= ~50 Hz).

  Elgendi's two-moving-averages detector: the 8-20 Hz band-passed ECG is squared; samples where its
  97-ms moving average exceeds its 611-ms moving average plus beta times the local (15-s) mean
  energy form blocks; blocks at least 97 ms wide hold one QRS each. The R peak is the extremum of
  the 0.5-40 Hz ECG in the block, with the ECG's dominant QRS polarity (so inverted leads work).
  Peaks closer than `refractory` seconds keep the larger one; parabolic interpolation refines the
  time. Non-finite samples are treated as zeros. `prefiltered=True` says `ecg` is already
  band-passed (e.g. 0.5-40 Hz by `apply_filter(..., "ecg", ...)`), saving one filter pass.
  """
  ecg = np.asarray(ecg, dtype=np.float64)
  if not np.isfinite(ecg).all():
    ecg = np.nan_to_num(ecg, nan=0.0, posinf=0.0, neginf=0.0)
  n = len(ecg)
  w1, w2 = max(2, int(round(w_qrs * rate))), max(3, int(round(w_beat * rate)))
  if n < 2 * w2:
    return np.zeros(0)
  wide = ecg if prefiltered else sps.sosfiltfilt(
      _butter(2, (0.5 / rate, min(40.0, 0.45 * rate) / rate), "bandpass"), ecg)
  narrow = sps.sosfiltfilt(_butter(2, (band[0] / rate, min(band[1], 0.45 * rate) / rate),
                                   "bandpass"), ecg)
  cs = np.concatenate([[0.0], np.cumsum(narrow * narrow)])
  above = _moving_mean(cs, w1) > _moving_mean(cs, w2) + beta * _moving_mean(cs, int(15 * rate))
  inside = np.concatenate([[False], above, [False]])
  edges = np.flatnonzero(np.diff(inside.view(np.int8)))
  starts, ends = edges[0::2], edges[1::2]  # block = [start, end)
  width = ends - starts
  keep = (width >= w1) & (width <= int(1.0 * rate))  # > 1 s wide: artefact, not a QRS
  starts, ends = starts[keep], ends[keep]
  if len(starts) == 0:
    return np.zeros(0)
  # Search window: the block widened by half a QRS window on each side.
  pad = w1 // 2
  lo = np.maximum(starts - pad, 0)
  span = int((ends - starts).max()) + 2 * pad
  idx = np.minimum(lo[:, None] + np.arange(span), n - 1)
  valid = idx < np.minimum(ends + pad, n)[:, None]
  seg = np.where(valid, wide[idx], np.nan)
  polarity = 1.0 if np.median(np.nanmax(seg, 1) + np.nanmin(seg, 1)) >= 0 else -1.0
  seg = np.where(valid, polarity * wide[idx], -np.inf)
  peaks = idx[np.arange(len(idx)), seg.argmax(1)]
  amps = polarity * wide[peaks]
  peaks, amps = _refractory(peaks, amps, int(round(refractory * rate)))
  # Parabolic interpolation of the apex on the (polarity-corrected) wide-band ECG.
  inner = (peaks > 0) & (peaks < n - 1)
  p = peaks[inner]
  ym, y0, yp = polarity * wide[p - 1], polarity * wide[p], polarity * wide[p + 1]
  denom = ym - 2 * y0 + yp
  shift = np.where(denom < 0, 0.5 * (ym - yp) / np.where(denom < 0, denom, -1.0), 0.0)
  times = peaks.astype(np.float64)
  times[inner] += np.clip(shift, -0.5, 0.5)
  return times / rate


def _refractory(peaks: np.ndarray, amps: np.ndarray, min_gap: int):
  """Drops the smaller of any two peaks closer than `min_gap` samples (repeated until none)."""
  order = np.argsort(peaks, kind="stable")
  peaks, amps = peaks[order], amps[order]
  while len(peaks) > 1:
    close = np.flatnonzero(np.diff(peaks) < min_gap)
    if len(close) == 0:
      break
    drop = np.where(amps[close] < amps[close + 1], close, close + 1)
    keep = np.ones(len(peaks), bool)
    keep[np.unique(drop)] = False
    peaks, amps = peaks[keep], amps[keep]
  return peaks, amps


# ----------------------------------------------------------------------------------- heart rate
def heart_rate_from_beats(beats_s: np.ndarray, n_out: int, rate_out: float = 4.0, *,
                          min_bpm: float = 30.0, max_bpm: float = 200.0,
                          outlier_tol: float = 0.3, max_gap_s: float = 5.0
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Heart rate in bpm on `n_out` samples at `rate_out` Hz from beat times, and its validity.

  Each RR interval gives 60 / RR at its midpoint. Intervals outside the physiologic limits
  (`min_bpm`..`max_bpm`) or deviating more than `outlier_tol` from the median of the 11 intervals
  around them (missed, extra or ectopic beats) are rejected. The rate is interpolated linearly
  between accepted midpoints; samples farther than `max_gap_s` apart from accepted midpoints on
  both sides, or outside the first/last one, are invalid (value held at the nearest valid rate).
  """
  beats_s = np.sort(np.asarray(beats_s, dtype=np.float64))
  t = np.arange(n_out) / rate_out
  if len(beats_s) < 3:
    return np.zeros(n_out, np.float32), np.zeros(n_out, bool)
  rr = np.diff(beats_s)
  mid = beats_s[:-1] + rr / 2
  ok = (rr >= 60.0 / max_bpm) & (rr <= 60.0 / min_bpm)
  if ok.sum() >= 3:
    med = ndimage.median_filter(rr, size=11, mode="nearest")
    ok &= np.abs(rr - med) <= outlier_tol * med
  if ok.sum() < 2:
    return np.zeros(n_out, np.float32), np.zeros(n_out, bool)
  mid, bpm = mid[ok], 60.0 / rr[ok]
  hr = np.interp(t, mid, bpm)
  right = np.searchsorted(mid, t, side="left")  # first accepted midpoint at or after t
  left = np.clip(right - 1, 0, len(mid) - 1)
  right_c = np.clip(right, 0, len(mid) - 1)
  exact = mid[right_c] == t
  valid = (right < len(mid)) & ((right > 0) | exact)
  valid &= (mid[right_c] - mid[left] <= max_gap_s) | exact
  return hr.astype(np.float32), valid
