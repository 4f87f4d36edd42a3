"""Per-epoch physiological features of a night: the numbers behind the multilevel captions.

`epoch_features` turns a harmonised night (physical units at the canonical rates of
`sleepjax.modalities.CANONICAL`) into a float32 array [n_epochs, len(FEATURE_NAMES)], NaN wherever a
feature cannot be computed (channel absent or masked in that epoch, too few beats or breaths...).
Every computation is vectorised over the whole night (filters on whole-night signals, Welch on
[epochs, samples] at once, event detection by run-length arithmetic), so an 8-hour 9-modality night
takes about a second on one core.

Features (name: unit; method). `<d>` is an EEG derivation (c4_m1, c3_m2).

- stage: code 0 W, 1 N1, 2 N2, 3 N3, 4 REM (NaN unscored).
- `<kind>_count`, `<kind>_onset_s`, `<kind>_offset_s` for kind in modalities.EVENTS: number of
  scored events overlapping the epoch; onset of the first and offset of the last of them in seconds
  from the epoch start, clipped to [0, 30] (0 = already running when the epoch starts, 30 = still
  running when it ends); onset/offset NaN when count is 0.
- eeg_<d>_{delta,theta,alpha,sigma,beta}: fraction (0-1) of 0.5-30 Hz power in 0.5-4, 4-8, 8-12,
  12-16, 16-30 Hz (Welch, 4-s Hamming windows, 50 % overlap, median; Simpson; as yasa.bandpower).
- eeg_<d>_spindles: count (by centre) of sleep spindles: RMS (0.2-s window) of the 11-16 Hz
  signal above 1.5 SD of that signal over the night's N2/N3 epochs for 0.5-3 s (Moelle et al. 2002).
- eeg_<d>_slow_waves: count (by negative peak) of slow waves: 0.3-1.5 Hz signal, negative
  half-wave 0.3-1.5 s, negative peak 40-200 uV, peak-to-peak 75-350 uV (Massimini et al. 2004,
  Carrier et al. 2011; yasa.sw_detect defaults).
- eog_slow_power, eog_rapid_power: uV^2, power of the E1-E2 derivation (one channel alone when
  only one is usable) in 0.3-1 Hz (slow eye movements) and 1-5 Hz (rapid eye movements).
- eog_rems: count of rapid eye movements: the 5-Hz low-passed E1-E2 signal changes by >= 40 uV
  within 100 ms (20 uV on a single channel); deflections closer than 0.3 s are one movement.
- emg_rms: uV, RMS of the 10-45 Hz chin EMG (below 50/60 Hz mains); emg_tone_db: 20*log10(rms/1uV).
- emg_median_freq: Hz, median frequency of the 10-45 Hz chin EMG power spectrum.
- emg_bursts: count of bursts: 0.2-s RMS envelope above 3x the epoch's median envelope for >= 0.1 s.
- hr_mean, hr_min, hr_max: bpm; hr_trend: bpm/min (least-squares slope). From the heart_rate
  channel (4 Hz) where usable, else from ECG R-peaks (`data_prep.signal.heart_rate_from_beats`).
- hr_rmssd: ms, RMSSD of successive RR intervals in the epoch (RR 0.3-2 s and within 30 % of the
  median of its 11 neighbours; >= 5 successive differences).
- spo2_mean, spo2_min: %; spo2_desats: count of desaturations starting in the epoch: SpO2 >= 3 %
  below its maximum over the preceding 120 s for >= 5 s (runs < 5 s apart merged). Values outside
  50-100 % are treated as artefact.
- effort_rate, airflow_rate: breaths/min = 60 / mean breath interval; effort_ibi_cv, airflow_ibi_cv:
  coefficient of variation of the breath intervals (>= 3 intervals of 1.5-15 s). Breaths are peaks of
  the 0.1-1 Hz signal with prominence >= 0.7 SD of that epoch. Effort: thorax, else abdomen; airflow:
  oronasal thermistor, else nasal pressure.
- flow_flatness: median flattening index (Hosselet et al. 1998) of the epoch's inspiratory
  half-cycles of nasal pressure: SD / mean of the flow over the middle half of each inspiration
  (0 = flat-topped, obstructed; ~0.1 for a sinusoidal breath). Inspiration is the polarity whose
  half-cycles are shorter over the night (I:E < 1).
- position: body-position code over the epoch (most frequent; SHHS coding 0 right, 1 supine,
  2 left, 3 prone; see POSITIONS).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import integrate
from scipy import signal as sps

from data_prep.detectors import (_count, _filt, detect_breaths,
                                 detect_desaturations, detect_emg_bursts, detect_rems,
                                 detect_slow_waves, detect_spindles, flatness_index,
                                 rmssd_per_epoch)
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS, EVENTS, STAGES

from data_prep.signal import detect_r_peaks, heart_rate_from_beats

DERIVATIONS = CANONICAL["eeg"].channels  # ("c4_m1", "c3_m2")
BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 16.0),
         "beta": (16.0, 30.0)}
POSITIONS = ("right", "supine", "left", "prone")  # SHHS position codes 0..3

FEATURE_NAMES: tuple[str, ...] = (
    ("stage",)
    + tuple(f"{k}_{s}" for k in EVENTS for s in ("count", "onset_s", "offset_s"))
    + tuple(f"eeg_{d}_{b}" for d in DERIVATIONS for b in (*BANDS, "spindles", "slow_waves"))
    + ("eog_slow_power", "eog_rapid_power", "eog_rems",
       "emg_rms", "emg_tone_db", "emg_median_freq", "emg_bursts",
       "hr_mean", "hr_min", "hr_max", "hr_trend", "hr_rmssd",
       "spo2_mean", "spo2_min", "spo2_desats",
       "effort_rate", "effort_ibi_cv", "airflow_rate", "airflow_ibi_cv", "flow_flatness",
       "position"))
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
UNITS = {"stage": "code", "eog_slow_power": "uV^2", "eog_rapid_power": "uV^2", "eog_rems": "count",
         "emg_rms": "uV", "emg_tone_db": "dB re 1 uV", "emg_median_freq": "Hz",
         "emg_bursts": "count", "hr_mean": "bpm", "hr_min": "bpm", "hr_max": "bpm",
         "hr_trend": "bpm/min", "hr_rmssd": "ms", "spo2_mean": "%", "spo2_min": "%",
         "spo2_desats": "count", "effort_rate": "breaths/min", "effort_ibi_cv": "ratio",
         "airflow_rate": "breaths/min", "airflow_ibi_cv": "ratio", "flow_flatness": "ratio",
         "position": "code"}
UNITS.update({f"{k}_{s}": u for k in EVENTS for s, u in
              (("count", "count"), ("onset_s", "s"), ("offset_s", "s"))})
UNITS.update({f"eeg_{d}_{b}": "fraction" for d in DERIVATIONS for b in BANDS})
UNITS.update({f"eeg_{d}_{b}": "count" for d in DERIVATIONS for b in ("spindles", "slow_waves")})


# ------------------------------------------------------------------------------------- helpers
def _usable(epoch_mask, modality, n_epochs, n_channels):
  m = None if epoch_mask is None else epoch_mask.get(modality)
  if m is None:
    return np.ones((n_epochs, n_channels), bool)
  m = np.asarray(m, bool)
  return m.reshape(n_epochs, -1) if m.ndim == 2 else np.broadcast_to(m, (n_epochs, n_channels))


def _band_power(f, p, lo, hi):
  df = f[1] - f[0]
  return p[..., (f >= lo) & (f < hi)].sum(-1) * df


def band_powers(x: np.ndarray, rate: float) -> np.ndarray:
  """Relative powers [..., 5] (delta..beta over 0.5-30 Hz) of segments x [..., samples].

  Welch PSD (4-s Hamming windows, 50 % overlap, median average) integrated with Simpson's rule
  over each band's bins (edges included), divided by the 0.5-30 Hz power: yasa.bandpower's
  estimator, so the two agree to rounding on the same data.
  """
  f, p = sps.welch(x, fs=rate, window="hamming", nperseg=int(4 * rate), noverlap=int(2 * rate),
                   axis=-1, average="median")
  df = f[1] - f[0]

  def integral(lo, hi):
    return integrate.simpson(p[..., (f >= lo) & (f <= hi)], dx=df, axis=-1)

  abs_p = np.stack([integral(lo, hi) for lo, hi in BANDS.values()], -1)
  total = integral(0.5, 30.0)[..., None]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, abs_p / total, np.nan)


# ---------------------------------------------------------------------------------- feature sets
def _stage_and_events(out, stages, events, n_ep):
  st = np.asarray(stages, np.float64)[:n_ep]
  out[: len(st), INDEX["stage"]] = np.where((st >= 0) & (st < len(STAGES)), st, np.nan)
  for kind in EVENTS:
    count = np.zeros(n_ep)
    first = np.full(n_ep, np.nan)
    last = np.full(n_ep, np.nan)
    for ev in events:
      if ev.kind != kind:
        continue
      t0, t1 = float(ev.onset_s), float(ev.onset_s) + max(float(ev.duration_s), 0.0)
      e0 = int(np.floor(t0 / EPOCH_SECONDS))
      e1 = int(np.ceil(t1 / EPOCH_SECONDS)) if t1 > t0 else e0 + 1
      for e in range(max(e0, 0), min(e1, n_ep)):
        start = e * EPOCH_SECONDS
        on, off = min(max(t0 - start, 0.0), 30.0), min(max(t1 - start, 0.0), 30.0)
        count[e] += 1
        first[e] = on if np.isnan(first[e]) else min(first[e], on)
        last[e] = off if np.isnan(last[e]) else max(last[e], off)
    out[:, INDEX[f"{kind}_count"]] = count
    out[:, INDEX[f"{kind}_onset_s"]] = first
    out[:, INDEX[f"{kind}_offset_s"]] = last


def _eeg(out, x, use, stages, n_ep):
  rate = CANONICAL["eeg"].rate
  spe = rate * EPOCH_SECONDS
  nrem = np.repeat(np.isin(np.asarray(stages)[:n_ep], (2, 3)), spe)
  for c, d in enumerate(DERIVATIONS):
    ok = use[:, c]
    if not ok.any():
      continue
    xe = x[c, : n_ep * spe].reshape(n_ep, spe)
    rel = np.full((n_ep, len(BANDS)), np.nan)
    rel[ok] = band_powers(xe[ok], rate)
    for j, b in enumerate(BANDS):
      out[:, INDEX[f"eeg_{d}_{b}"]] = rel[:, j]
    okr = np.repeat(ok, spe)
    ref = okr & nrem if (okr & nrem).any() else okr
    sp = _count(detect_spindles(x[c, : n_ep * spe], rate, ref) // spe, n_ep)
    sw = _count(detect_slow_waves(x[c, : n_ep * spe], rate) // spe, n_ep)
    out[:, INDEX[f"eeg_{d}_spindles"]] = np.where(ok, sp, np.nan)
    out[:, INDEX[f"eeg_{d}_slow_waves"]] = np.where(ok, sw, np.nan)


def _eog(out, x, use, n_ep):
  rate = CANONICAL["eog"].rate
  spe = rate * EPOCH_SECONDS
  x = x[:, : n_ep * spe].astype(np.float64)
  both = use[:, 0] & use[:, 1]
  only = use[:, 0] ^ use[:, 1]
  if not (both.any() or only.any()):
    return
  # Per epoch: E1 - E2 where both are usable, the usable channel otherwise (rows of [n_ep, spe]).
  xr = x.reshape(len(x), n_ep, spe)
  sig = np.where(both[:, None], xr[0] - xr[1], np.where(use[:, 0][:, None], xr[0], xr[1]))
  f, p = sps.welch(sig, fs=rate, nperseg=10 * rate, noverlap=5 * rate, axis=-1)
  ok = both | only
  out[:, INDEX["eog_slow_power"]] = np.where(ok, _band_power(f, p, 0.3, 1.0), np.nan)
  out[:, INDEX["eog_rapid_power"]] = np.where(ok, _band_power(f, p, 1.0, 5.0), np.nan)
  thr = np.repeat(np.where(both, 40.0, 20.0), spe)
  rems = _count(detect_rems(sig.reshape(-1), rate, thr) // spe, n_ep)
  out[:, INDEX["eog_rems"]] = np.where(ok, rems, np.nan)


def _emg(out, x, use, n_ep):
  rate = CANONICAL["emg"].rate
  spe = rate * EPOCH_SECONDS
  ok = use[:, 0]
  if not ok.any():
    return
  y = _filt(x[0, : n_ep * spe], rate, 10.0, 45.0, order=4)
  ye = y.reshape(n_ep, spe)
  rms = np.sqrt((ye * ye).mean(1))
  f, p = sps.welch(ye, fs=rate, nperseg=2 * rate, axis=-1)
  band = (f >= 10) & (f <= 45)
  cum = np.cumsum(p[:, band], 1)
  med = f[band][np.minimum((cum < cum[:, -1:] / 2).sum(1), band.sum() - 1)]
  bursts = _count(detect_emg_bursts(y, rate, spe) // spe, n_ep)
  with np.errstate(divide="ignore"):
    tone = 20 * np.log10(rms)
  for name, v in (("emg_rms", rms), ("emg_tone_db", tone), ("emg_median_freq", med),
                  ("emg_bursts", bursts)):
    out[:, INDEX[name]] = np.where(ok & (rms > 0), v, np.nan)


def _hr_stats(out, hr, valid, n_ep):
  """hr_mean/min/max/trend from a 4-Hz bpm series with validity; >= 50 % valid samples per epoch."""
  spe = CANONICAL["heart_rate"].rate * EPOCH_SECONDS
  h = hr[: n_ep * spe].reshape(n_ep, spe).astype(np.float64)
  v = valid[: n_ep * spe].reshape(n_ep, spe) & np.isfinite(h) & (h >= 25) & (h <= 250)
  n = v.sum(1)
  enough = n >= spe // 2
  hz = np.where(v, h, 0.0)
  mean = hz.sum(1) / np.maximum(n, 1)
  t = np.arange(spe) / CANONICAL["heart_rate"].rate
  tbar = (v * t).sum(1) / np.maximum(n, 1)
  dt = np.where(v, t - tbar[:, None], 0.0)
  slope = (dt * (hz - mean[:, None])).sum(1) / np.maximum((dt * dt).sum(1), 1e-9) * 60.0
  out[:, INDEX["hr_mean"]] = np.where(enough, mean, np.nan)
  out[:, INDEX["hr_min"]] = np.where(enough, np.where(v, h, np.inf).min(1), np.nan)
  out[:, INDEX["hr_max"]] = np.where(enough, np.where(v, h, -np.inf).max(1), np.nan)
  out[:, INDEX["hr_trend"]] = np.where(enough, slope, np.nan)


def _cardiac(out, signals, epoch_mask, n_ep, r_peaks):
  hr_rate = CANONICAL["heart_rate"].rate
  spe_hr = hr_rate * EPOCH_SECONDS
  ecg_ok = np.zeros(n_ep, bool)
  beats = None
  if "ecg" in signals:
    ecg_ok = _usable(epoch_mask, "ecg", n_ep, 1)[:, 0]
    if ecg_ok.any():
      rate = CANONICAL["ecg"].rate
      if r_peaks is not None:
        rp = np.asarray(r_peaks)
        beats = rp / rate if np.issubdtype(rp.dtype, np.integer) else rp.astype(np.float64)
      else:
        x = np.asarray(signals["ecg"])[0, : n_ep * rate * EPOCH_SECONDS]
        beats = detect_r_peaks(x, rate)
      # beats inside unusable epochs are dropped
      beats = beats[ecg_ok[np.clip((beats // EPOCH_SECONDS).astype(int), 0, n_ep - 1)]]
      out[:, INDEX["hr_rmssd"]] = rmssd_per_epoch(beats, n_ep, ecg_ok)
  hr_ok = np.zeros(n_ep, bool)
  if "heart_rate" in signals:
    hr_ok = _usable(epoch_mask, "heart_rate", n_ep, 1)[:, 0]
  hr = np.zeros(n_ep * spe_hr)
  valid = np.zeros(n_ep * spe_hr, bool)
  if hr_ok.any():
    hr = np.asarray(signals["heart_rate"])[0, : n_ep * spe_hr].astype(np.float64)
    valid = np.repeat(hr_ok, spe_hr)
  if beats is not None and (ecg_ok & ~hr_ok).any():
    hb, vb = heart_rate_from_beats(beats, n_ep * spe_hr, hr_rate)
    fill = np.repeat(ecg_ok & ~hr_ok, spe_hr)
    hr = np.where(fill, hb, hr)
    valid = np.where(fill, vb, valid)
  if valid.any():
    _hr_stats(out, hr, valid, n_ep)


def _spo2(out, x, use, n_ep):
  rate = CANONICAL["spo2"].rate
  spe = rate * EPOCH_SECONDS
  ok = use[:, 0]
  if not ok.any():
    return
  s = x[0, : n_ep * spe].astype(np.float64)
  good = np.repeat(ok, spe) & (s >= 50) & (s <= 100)
  se = s.reshape(n_ep, spe)
  ge = good.reshape(n_ep, spe)
  n = ge.sum(1)
  enough = n >= spe // 2
  out[:, INDEX["spo2_mean"]] = np.where(enough, np.where(ge, se, 0).sum(1) / np.maximum(n, 1),
                                        np.nan)
  out[:, INDEX["spo2_min"]] = np.where(enough, np.where(ge, se, np.inf).min(1), np.nan)
  st = detect_desaturations(s, good, rate)
  out[:, INDEX["spo2_desats"]] = np.where(enough, _count(st // spe, n_ep), np.nan)


def _breathing(x, use_c, rate, n_ep):
  """(rate breaths/min, interval CV) per epoch for one channel."""
  spe = rate * EPOCH_SECONDS
  pk = detect_breaths(x[: n_ep * spe], rate, spe)
  res_rate, res_cv = np.full(n_ep, np.nan), np.full(n_ep, np.nan)
  if len(pk) < 2:
    return res_rate, res_cv
  iv = np.diff(pk) / rate
  ep = pk[1:] // spe
  good = (iv >= 1.5) & (iv <= 15.0) & use_c[np.minimum(ep, n_ep - 1)] & (ep == pk[:-1] // spe)
  n = _count(ep[good], n_ep)
  s1 = _count(ep[good], n_ep, iv[good])
  s2 = _count(ep[good], n_ep, iv[good] ** 2)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = s1 / n
    sd = np.sqrt(np.maximum(s2 / n - mean * mean, 0) * n / np.maximum(n - 1, 1))
  enough = (n >= 3) & use_c
  return np.where(enough, 60.0 / mean, np.nan), np.where(enough, sd / mean, np.nan)


def _respiration(out, signals, epoch_mask, n_ep):
  for prefix, sources in (("effort", (("resp_effort", 0), ("resp_effort", 1))),
                          ("airflow", (("airflow", 0), ("nasal_pressure", 0)))):
    rate_out = np.full(n_ep, np.nan)
    cv_out = np.full(n_ep, np.nan)
    for modality, c in sources:
      if modality not in signals:
        continue
      spec = CANONICAL[modality]
      use = _usable(epoch_mask, modality, n_ep, len(spec.channels))[:, c]
      todo = use & np.isnan(rate_out)
      if not todo.any():
        continue
      r, v = _breathing(np.asarray(signals[modality])[c], use, spec.rate, n_ep)
      rate_out = np.where(todo, r, rate_out)
      cv_out = np.where(todo, v, cv_out)
    out[:, INDEX[f"{prefix}_rate"]] = rate_out
    out[:, INDEX[f"{prefix}_ibi_cv"]] = cv_out


def _flatness(out, signals, epoch_mask, n_ep):
  if "nasal_pressure" not in signals:
    return
  use = _usable(epoch_mask, "nasal_pressure", n_ep, 1)[:, 0]
  if use.any():
    fi = flatness_index(np.asarray(signals["nasal_pressure"])[0], CANONICAL["nasal_pressure"].rate,
                        n_ep)
    out[:, INDEX["flow_flatness"]] = np.where(use, fi, np.nan)


def _position(out, position, n_ep):
  if position is None:
    return
  p = np.asarray(position, np.float64).reshape(-1)
  if p.size == 0:
    return
  per = max(1, int(round(len(p) / (n_ep * EPOCH_SECONDS))))  # samples per second
  need = n_ep * EPOCH_SECONDS * per
  if len(p) < need:
    p = np.concatenate([p, np.full(need - len(p), np.nan)])
  pe = p[:need].reshape(n_ep, -1)
  counts = np.stack([(np.round(pe) == k).sum(1) for k in range(len(POSITIONS))], 1)
  out[:, INDEX["position"]] = np.where(counts.sum(1) > 0, counts.argmax(1), np.nan)


# ------------------------------------------------------------------------------------ public API
def epoch_features(signals: dict[str, np.ndarray], epoch_mask: dict[str, np.ndarray],
                   stages: np.ndarray, events: list, *, position: np.ndarray | None = None,
                   r_peaks: np.ndarray | None = None) -> np.ndarray:
  """Features of every 30-s epoch: float32 [n_epochs, len(FEATURE_NAMES)], NaN where unknown.

  signals: modality -> float [C, n_epochs * rate * 30] in physical units at the canonical rate
  (absent modalities left out); epoch_mask: modality -> bool [n_epochs, C] (False = unusable);
  stages: int [n_epochs]; events: objects with kind, onset_s, duration_s; position: optional body
  position codes (POSITIONS) at 1 Hz (any integer rate); r_peaks: optional R-peak times in seconds
  from the recording start (an integer array is read as sample indices at the ECG's 128 Hz);
  without it R peaks come from `data_prep.signal.detect_r_peaks` on the ECG.
  """
  n_ep = len(stages)
  out = np.full((n_ep, len(FEATURE_NAMES)), np.nan)
  if n_ep == 0:
    return out.astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    _stage_and_events(out, stages, events, n_ep)
    for name, fn in (("eeg", lambda x, u: _eeg(out, x, u, stages, n_ep)),
                     ("eog", lambda x, u: _eog(out, x, u, n_ep)),
                     ("emg", lambda x, u: _emg(out, x, u, n_ep)),
                     ("spo2", lambda x, u: _spo2(out, x, u, n_ep))):
      if name in signals:
        x = np.asarray(signals[name])
        fn(x, _usable(epoch_mask, name, n_ep, len(CANONICAL[name].channels)))
    _cardiac(out, signals, epoch_mask, n_ep, r_peaks)
    _respiration(out, signals, epoch_mask, n_ep)
    _flatness(out, signals, epoch_mask, n_ep)
    _position(out, position, n_ep)
  return out.astype(np.float32)


def night_summary(features: np.ndarray, stages: np.ndarray, events: list) -> dict:
  """Night-level statistics (minutes, %, events per hour of sleep); NaN where undefined.

  Keys: tib_min (scored time in bed), tst_min, efficiency_pct, sleep_latency_min, rem_latency_min
  (from sleep onset), waso_min, {w,n1,n2,n3,rem}_pct (W of time in bed, sleep stages of TST),
  ahi (apneas + hypopneas starting in sleep), arousal_index, plm_index (limb movements in sleep),
  odi (>= 3 % desaturations detected in SpO2 during sleep, per hour of sleep with usable SpO2;
  scored desaturations when no SpO2 signal), hr_mean_sleep, spo2_mean_sleep, spo2_min.
  """
  st = np.asarray(stages)
  f = np.asarray(features, np.float64)
  scored = st >= 0
  sleep = (st >= 1) & (st <= 4)
  ep_min = EPOCH_SECONDS / 60
  tib, tst = scored.sum() * ep_min, sleep.sum() * ep_min
  nan = float("nan")
  s = {"tib_min": tib, "tst_min": tst,
       "efficiency_pct": 100 * tst / tib if tib else nan}
  first_scored = int(np.argmax(scored)) if scored.any() else 0
  if sleep.any():
    onset, last = int(np.argmax(sleep)), len(st) - 1 - int(np.argmax(sleep[::-1]))
    s["sleep_latency_min"] = (onset - first_scored) * ep_min
    rem = np.flatnonzero(st == 4)
    s["rem_latency_min"] = (rem[0] - onset) * ep_min if len(rem) else nan
    s["waso_min"] = (st[onset:last + 1] == 0).sum() * ep_min
  else:
    s.update(sleep_latency_min=nan, rem_latency_min=nan, waso_min=nan)
  s["w_pct"] = 100 * (st == 0).sum() * ep_min / tib if tib else nan
  for code, name in ((1, "n1"), (2, "n2"), (3, "n3"), (4, "rem")):
    s[f"{name}_pct"] = 100 * (st == code).sum() * ep_min / tst if tst else nan
  hours = tst / 60

  def in_sleep(ev):
    e = int(ev.onset_s // EPOCH_SECONDS)
    return 0 <= e < len(st) and sleep[e]

  def index(kinds):
    return sum(ev.kind in kinds and in_sleep(ev) for ev in events) / hours if hours else nan

  s["ahi"] = index(("apnea", "hypopnea"))
  s["arousal_index"] = index(("arousal",))
  s["plm_index"] = index(("limb_movement",))
  des = f[:, INDEX["spo2_desats"]] if f.size else np.zeros(0)
  ok = sleep[: len(des)] & np.isfinite(des)
  if ok.any():
    s["odi"] = des[ok].sum() / (ok.sum() * ep_min / 60)
  elif any(ev.kind == "desaturation" for ev in events):
    s["odi"] = index(("desaturation",))
  else:
    s["odi"] = nan

  def mean_in_sleep(name, fn=np.mean):
    v = f[: len(sleep), INDEX[name]][sleep[: len(f)]] if f.size else np.zeros(0)
    v = v[np.isfinite(v)]
    return float(fn(v)) if len(v) else nan

  s["hr_mean_sleep"] = mean_in_sleep("hr_mean")
  s["spo2_mean_sleep"] = mean_in_sleep("spo2_mean")
  s["spo2_min"] = mean_in_sleep("spo2_min", np.min)
  return {k: float(v) for k, v in s.items()}
