"""Event and signal detectors behind `data_prep.features`: spindles, slow waves, rapid eye
movements, EMG bursts, desaturations, breaths, the inspiratory flattening index, RMSSD per epoch and
a fallback R-peak detector.

All vectorised over a whole night (zero-phase Butterworth filters, run-length arithmetic); the
methods and thresholds are documented with the features they feed in `data_prep.features`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from sleepjax.modalities import EPOCH_SECONDS


# ------------------------------------------------------------------------------------- helpers
def _sos(order, lo, hi, rate):
  if lo is None:
    return sps.butter(order, hi, "lowpass", fs=rate, output="sos")
  if hi is None:
    return sps.butter(order, lo, "highpass", fs=rate, output="sos")
  return sps.butter(order, (lo, hi), "bandpass", fs=rate, output="sos")


def _filt(x, rate, lo, hi, order=2):
  return sps.sosfiltfilt(_sos(order, lo, hi, rate), np.asarray(x, np.float64), axis=-1)


def _runs(cond):
  """(starts, ends) of True runs in a 1-D bool array; a run is [start, end)."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], cond.view(np.int8), [0]])))
  return edges[0::2], edges[1::2]


def _merge(starts, ends, gap):
  """Merges runs separated by fewer than `gap` samples."""
  if len(starts) < 2:
    return starts, ends
  keep = np.concatenate([[True], starts[1:] - ends[:-1] >= gap])
  group = np.cumsum(keep) - 1
  return starts[keep], np.maximum.reduceat(ends, np.flatnonzero(keep))[: group[-1] + 1]


def _count(epoch_of, n_epochs, weights=None):
  epoch_of = np.asarray(epoch_of, np.int64)
  ok = (epoch_of >= 0) & (epoch_of < n_epochs)
  w = None if weights is None else np.asarray(weights)[ok]
  return np.bincount(epoch_of[ok], weights=w, minlength=n_epochs)[:n_epochs].astype(np.float64)


def _moving_rms(x, width):
  return np.sqrt(np.maximum(ndimage.uniform_filter1d(x * x, max(1, width), mode="nearest"), 0))


# ------------------------------------------------------------------------------------ detectors
def detect_spindles(x: np.ndarray, rate: float, reference: np.ndarray | None = None):
  """Spindle centres (samples) in x: 11-16 Hz RMS > 1.5 SD (of `reference` samples) for 0.5-3 s."""
  y = _filt(x, rate, 11.0, 16.0, order=4)
  ref = y if reference is None else y[reference]
  if ref.size == 0:
    return np.zeros(0, np.int64)
  thr = 1.5 * np.std(ref)
  s, e = _runs(_moving_rms(y, int(0.2 * rate)) > thr)
  dur = (e - s) / rate
  keep = (dur >= 0.5) & (dur <= 3.0)
  return (s[keep] + e[keep]) // 2


def detect_slow_waves(x: np.ndarray, rate: float):
  """Negative-peak samples of slow waves (0.3-1.5 Hz; neg 40-200 uV; ptp 75-350 uV)."""
  y = _filt(x, rate, 0.3, 1.5, order=2)
  neg = y < 0
  c = np.flatnonzero(neg[1:] != neg[:-1]) + 1  # first sample of each new sign run
  if len(c) < 3:
    return np.zeros(0, np.int64)
  seg_min = np.minimum.reduceat(y, c)[:-1]  # segments [c[k], c[k+1])
  seg_max = np.maximum.reduceat(y, c)[:-1]
  seg_len = np.diff(c)
  is_neg = neg[c[:-1]]
  k = np.flatnonzero(is_neg[:-1])  # negative half-wave k followed by positive k+1
  dur = seg_len[k] / rate
  ptp = seg_max[k + 1] - seg_min[k]
  ok = ((dur >= 0.3) & (dur <= 1.5) & (-seg_min[k] >= 40) & (-seg_min[k] <= 200)
        & (ptp >= 75) & (ptp <= 350))
  k = k[ok]
  if len(k) == 0:
    return np.zeros(0, np.int64)
  # negative peak position: argmin inside each selected segment
  span = int(seg_len[k].max())
  idx = np.minimum(c[k][:, None] + np.arange(span), len(y) - 1)
  vals = np.where(np.arange(span) < seg_len[k][:, None], y[idx], np.inf)
  return idx[np.arange(len(k)), vals.argmin(1)]


def detect_rems(x: np.ndarray, rate: float, thr: np.ndarray):
  """Rapid-eye-movement onsets (samples): the 5-Hz low-passed x changes by >= thr (per sample, uV)
  within 100 ms; deflections closer than 0.3 s are one movement."""
  y = _filt(x, rate, None, 5.0, order=4)
  lag = int(0.1 * rate)
  jump = np.abs(y[lag:] - y[:-lag])
  s, _ = _merge(*_runs(jump >= thr[:-lag]), int(0.3 * rate))
  return s


def detect_emg_bursts(y: np.ndarray, rate: float, spe: int):
  """Burst onsets (samples) in band-passed EMG y: 0.2-s RMS envelope above 3x the median envelope
  of its epoch (`spe` samples) for >= 0.1 s."""
  env = _moving_rms(y, int(0.2 * rate))
  base = np.median(env.reshape(-1, spe), 1)
  s, e = _runs(env > 3 * np.repeat(base, spe))
  return s[(e - s) >= int(0.1 * rate)]


def detect_desaturations(s: np.ndarray, good: np.ndarray, rate: float):
  """Desaturation onsets (samples) in SpO2 s (%, `good` samples only): >= 3 % below the maximum
  of the preceding 120 s for >= 5 s, runs < 5 s apart merged."""
  w = 120 * rate
  padded = np.concatenate([np.full(w - 1, -np.inf), np.where(good, s, -np.inf)])
  ref = ndimage.maximum_filter1d(padded, w, origin=(w - 1) // 2)[w - 1:]
  drop = good & np.isfinite(ref) & (ref - s >= 3.0)
  st, en = _merge(*_runs(drop), 5 * rate)
  return st[(en - st) >= 5 * rate]


def detect_breaths(x: np.ndarray, rate: float, spe: int):
  """Breath peak samples: 0.1-1 Hz signal, prominence >= 0.7 SD of its epoch, >= 1.5 s apart."""
  y = _filt(x, rate, 0.1, 1.0, order=2)
  n_ep = len(y) // spe
  sd = y[: n_ep * spe].reshape(n_ep, spe).std(1)
  thr = np.repeat(0.7 * sd, spe)
  thr = np.concatenate([thr, np.full(len(y) - len(thr), thr[-1] if len(thr) else 0.0)])
  peaks, _ = sps.find_peaks(y, distance=max(1, int(1.5 * rate)), prominence=(thr, None))
  return peaks[thr[peaks] > 0]


def rmssd_per_epoch(beats_s: np.ndarray, n_ep: int, epoch_ok: np.ndarray | None = None):
  """RMSSD (ms) per epoch from beat times (s); NaN with < 5 accepted successive differences."""
  beats_s = np.sort(np.asarray(beats_s, np.float64))
  res = np.full(n_ep, np.nan)
  if len(beats_s) < 4:
    return res
  rr = np.diff(beats_s)
  ok = (rr >= 0.3) & (rr <= 2.0)
  med = ndimage.median_filter(rr, size=11, mode="nearest")
  ok &= np.abs(rr - med) <= 0.3 * med
  ep = np.floor(beats_s[1:] / EPOCH_SECONDS).astype(np.int64)  # epoch of the interval's end
  pair = ok[1:] & ok[:-1] & (ep[1:] == ep[:-1])
  d2 = np.diff(rr) ** 2
  n = _count(ep[1:][pair], n_ep)
  s = _count(ep[1:][pair], n_ep, d2[pair])
  with np.errstate(invalid="ignore", divide="ignore"):
    res = np.where(n >= 5, np.sqrt(s / np.maximum(n, 1)) * 1000.0, np.nan)
  if epoch_ok is not None:
    res = np.where(epoch_ok, res, np.nan)
  return res


def flatness_index(x: np.ndarray, rate: float, n_ep: int) -> np.ndarray:
  """Per-epoch median inspiratory flattening index of a nasal-pressure signal (NaN < 3 breaths)."""
  spe = rate * EPOCH_SECONDS
  y = _filt(x[: n_ep * spe], rate, 0.05, 4.0, order=2)
  res = np.full(n_ep, np.nan)
  sd = np.repeat(y.reshape(n_ep, spe).std(1), spe)

  def lobes(z):
    pos = z > 0
    up = np.flatnonzero(~pos[:-1] & pos[1:]) + 1
    down = np.flatnonzero(pos[:-1] & ~pos[1:]) + 1
    if len(up) == 0 or len(down) == 0:
      return up[:0], up[:0]
    j = np.searchsorted(down, up)
    ok = j < len(down)
    return up[ok], down[j[ok]]

  best = None
  for sign in (1.0, -1.0):
    u, d = lobes(sign * y)
    dur = (d - u) / rate
    keep = (dur >= 0.5) & (dur <= 5.0)
    u, d = u[keep], d[keep]
    if len(u) and (best is None or np.median(d - u) < best[0]):
      best = (np.median(d - u), sign, u, d)
  if best is None:
    return res
  _, sign, u, d = best
  z = sign * y
  L = d - u
  a, b = u + L // 4, u + (3 * L) // 4
  c1 = np.concatenate([[0.0], np.cumsum(z)])
  c2 = np.concatenate([[0.0], np.cumsum(z * z)])
  n = np.maximum(b - a, 1)
  mean = (c1[b] - c1[a]) / n
  var = np.maximum((c2[b] - c2[a]) / n - mean * mean, 0.0)
  peak = np.maximum.reduceat(z, np.stack([u, d], 1).reshape(-1))[0::2] if len(u) else mean
  ok = (b - a >= 3) & (mean > 0) & (peak >= 0.2 * sd[u])
  fi = np.sqrt(var[ok]) / mean[ok]
  ep = u[ok] // spe
  if len(fi) == 0:
    return res
  order = np.lexsort((fi, ep))
  ep, fi = ep[order], fi[order]
  starts = np.flatnonzero(np.concatenate([[True], ep[1:] != ep[:-1]]))
  counts = np.diff(np.concatenate([starts, [len(ep)]]))
  lo_mid = starts + (counts - 1) // 2
  hi_mid = starts + counts // 2
  med = 0.5 * (fi[lo_mid] + fi[hi_mid])
  sel = counts >= 3
  res[ep[starts[sel]]] = med[sel]
  return res
