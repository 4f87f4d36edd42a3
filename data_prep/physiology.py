"""Signal models behind :mod:`data_prep.synthetic`.

Everything here is vectorised numpy: a night is described by a :class:`Latent`
state (hypnogram, per-second physiological drives, event times), rendered
channel by channel at any sampling rate by :class:`data_prep.render.Renderer`.
No per-sample Python loops; loops only run over discrete events (a few hundred
per night).

Stage codes: 0=W, 1=N1, 2=N2, 3=N3, 4=REM.  Amplitudes are in uV (EEG/EOG/EMG),
mV (ECG), % (SpO2) and arbitrary units (respiration).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import signal as sps

W, N1, N2, N3, REM = 0, 1, 2, 3, 4
EPOCH_S = 30
STAGE_NAMES = ("W", "N1", "N2", "N3", "REM")


@dataclasses.dataclass(frozen=True)
class Event:
  """A scored event. Unpacks like a ``(kind, onset_s, duration_s)`` tuple."""

  kind: str  # obstructive_apnea | hypopnea | desaturation | arousal | limb_movement
  onset_s: float
  duration_s: float
  spo2_nadir: float | None = None
  spo2_baseline: float | None = None

  def __iter__(self):
    return iter((self.kind, self.onset_s, self.duration_s))


# --------------------------------------------------------------------------- hypnogram
def simulate_hypnogram(n_epochs: int, age: float, rng: np.random.Generator) -> np.ndarray:
  """Cyclic sleep architecture at 30-s resolution (all five stages always present)."""
  if n_epochs < 20:
    raise ValueError("a night needs at least 20 epochs (10 min) to hold all stages")
  sol = min(int(rng.integers(10, 41)), max(4, n_epochs // 10))  # 5-20 min of wake
  final = int(rng.integers(2, 11)) if n_epochs >= 360 else 1
  sleep = n_epochs - sol - final
  n_cyc = max(1, int(round(sleep / 185)))
  lens = np.floor(rng.dirichlet(np.full(n_cyc, 40.0)) * sleep).astype(int)
  lens[-1] += sleep - lens.sum()
  age_f = float(np.clip(1.3 - 0.012 * (age - 20), 0.35, 1.3))
  seq = [np.full(sol, W)]
  for k, L in enumerate(lens):
    f = k / (n_cyc - 1) if n_cyc > 1 else 0.0
    n1 = max(1, round(L * (0.06 if k == 0 else 0.025)))
    n3 = round(L * 0.42 * (1 - f) ** 2 * age_f * rng.uniform(0.8, 1.2))
    if k == 0:
      n3 = max(n3, 3)
    rem = max(2, round(L * (0.11 + 0.26 * f) * rng.uniform(0.85, 1.15)))
    n2 = L - n1 - n3 - rem
    if n2 < 4:  # very short cycle: squeeze N3/REM
      n3 = max(3 if k == 0 else 0, n3 + n2 - 4)
      n2 = L - n1 - n3 - rem
    n2a = min(n2, max(2, round(n2 * 0.4))) if n3 else n2
    parts = [(N1, n1), (N2, n2a), (N3, n3), (N2, n2 - n2a), (REM, rem)]
    seq += [np.full(n, s) for s, n in parts if n > 0]
  seq.append(np.full(final, W))
  hyp = np.concatenate(seq).astype(np.int8)[:n_epochs]

  # ragged N2/N3 borders: N3 depth fluctuates around the threshold
  is3 = hyp == N3
  starts = np.maximum.accumulate(
      np.where(np.diff(np.r_[0, is3.astype(int)]) == 1, np.arange(n_epochs), 0)
  )
  ends = np.minimum.accumulate(
      np.where(np.diff(np.r_[is3.astype(int), 0]) == -1, np.arange(n_epochs), n_epochs)[::-1]
  )[::-1]
  d_edge = np.minimum(np.arange(n_epochs) - starts, ends - np.arange(n_epochs))
  flip = is3 & (rng.random(n_epochs) < 0.3 * np.exp(-d_edge / 2.0) + 0.03)
  hyp[flip] = N2

  # awakenings (WASO): wake bout then 1-2 epochs N1, more frequent with age
  sleep_idx = np.flatnonzero(hyp > 0)
  hours = len(sleep_idx) / 120
  n_wake = rng.poisson((1.2 + 0.03 * (age - 20)) * hours)
  lo = sol + min(30, len(sleep_idx) // 3)
  for _ in range(n_wake):
    i = int(rng.integers(lo, max(lo + 1, n_epochs - final - 3)))
    u = rng.random()
    dur = (
        1
        if u < 0.55
        else int(rng.integers(2, 5))
        if u < 0.85
        else int(rng.integers(5, 16 + age // 10))
    )
    j = min(i + dur, n_epochs - final)
    hyp[i:j] = W
    hyp[j : min(j + int(rng.integers(1, 3)), n_epochs - final)] = N1
  # scattered single-epoch N1 in light sleep and REM fragmentation
  light = np.flatnonzero((hyp == N2) | (hyp == REM))
  pick = light[rng.random(len(light)) < 0.012]
  hyp[pick] = N1

  # guarantee every stage (short nights, unlucky draws)
  for s in (N1, N2, N3, REM):
    if not np.any(hyp == s):
      cand = np.flatnonzero(hyp == N2)
      i = int(cand[len(cand) // 2]) if len(cand) else sol + 2
      hyp[i : i + 2] = s
  if not np.any(hyp == W):
    hyp[0] = W
  return hyp


# --------------------------------------------------------------------------- helpers
def _ou(rng, n, tau, sigma):
  """Ornstein-Uhlenbeck (AR(1)) series per second with time constant tau (s)."""
  a = np.exp(-1.0 / tau)
  x = sps.lfilter([np.sqrt(1 - a * a)], [1, -a], rng.standard_normal(n))
  return sigma * x


def _box(x, width):
  """Centered moving average with edge replication (width in samples)."""
  if width <= 1:
    return x
  pad = width // 2
  xp = np.pad(x, (pad, width - 1 - pad), mode="edge")
  c = np.cumsum(np.r_[0.0, xp])
  return (c[width:] - c[:-width]) / width


def _poisson_times(rng, rate_per_s):
  """Event times (s) of an inhomogeneous Poisson process with per-second rate."""
  counts = rng.poisson(np.maximum(rate_per_s, 0))
  return np.repeat(np.arange(len(rate_per_s)), counts) + rng.random(counts.sum())


# --------------------------------------------------------------------------- latent state
BANDS = ("pink", "sdelta", "fdelta", "theta", "alpha", "sigma", "beta")
# std (uV) of each EEG band component per stage (W row: eyes-closed drowsy wake)
EEG_TABLE = np.array(
    [
        # pink sdelta fdelta theta alpha sigma beta
        [5.0, 6.0, 3.5, 3.5, 12.0, 1.5, 3.0],  # W
        [5.0, 8.0, 5.0, 8.0, 3.0, 1.5, 2.0],  # N1
        [5.0, 10.0, 7.0, 5.0, 2.0, 2.5, 1.5],  # N2
        [5.0, 48.0, 15.0, 5.0, 2.0, 2.0, 1.2],  # N3
        [4.5, 7.0, 5.0, 7.0, 4.0, 1.0, 2.0],  # REM
    ]
)
EMG_TONIC = np.array([8.0, 5.0, 3.5, 3.0, 1.2])  # uV std per stage
SEM_AMP = np.array([0.0, 45.0, 8.0, 0.0, 0.0])  # slow eye movements, uV
HR_OFFSET = np.array([6.0, 2.0, 0.0, -3.0, 3.0])  # bpm
HR_VAR = np.array([3.0, 2.0, 1.5, 1.0, 3.5])
BR_MULT = np.array([1.05, 1.0, 0.98, 0.95, 1.08])  # breathing rate multiplier
BR_VAR = np.array([0.12, 0.08, 0.05, 0.02, 0.15])
AMP_VAR = np.array([0.2, 0.12, 0.08, 0.04, 0.25])
RESP_EVENT_MULT = np.array([0.0, 1.2, 1.0, 0.4, 1.8])


@dataclasses.dataclass
class Latent:
  """Rate-independent description of one night (per-second drives + event times)."""

  hyp: np.ndarray
  n_sec: int
  seed: int
  env: dict  # name -> per-second array
  events: list
  points: dict  # name -> tuple of arrays (times, amplitudes, ...)
  spo2: np.ndarray  # per-second, %
  position: np.ndarray  # per-second code 0..3
  breath_phase: np.ndarray  # cumulative breathing phase (rad) at second boundaries
  alpha_hz: float
  emg_dead: tuple | None = None  # (start_s, end_s) of a disconnected chin EMG


def _stage_sec(hyp):
  return np.repeat(hyp, EPOCH_S)


def simulate_latent(hyp, age, male, bmi, ahi, rng, emg_disconnect_prob=0.0) -> Latent:
  n_ep = len(hyp)
  n = n_ep * EPOCH_S
  st = _stage_sec(hyp)
  t_ep = np.arange(n_ep) * EPOCH_S
  sleep = st > 0
  env = {}

  # ---- eyes-open fraction in wake (blinks, beta, EMG) vs eyes-closed alpha
  eo_ep = np.where(hyp == W, rng.beta(2, 3, n_ep), 0.0)
  first_sleep = int(np.argmax(hyp > 0))
  eo_ep[:first_sleep] = rng.beta(1.5, 5, first_sleep)
  eo_ep[max(0, first_sleep - 3) : first_sleep] *= 0.3  # drowsy just before sleep onset
  eo = _box(np.repeat(eo_ep, EPOCH_S), 9)

  # ---- EEG band amplitudes per epoch
  tab = EEG_TABLE[hyp].copy()
  delta_f = float(np.clip(1.25 - 0.008 * (age - 20), 0.7, 1.25)) * (1.0 if male else 1.08)
  homeo = np.clip(1.1 - 0.25 * t_ep / (8 * 3600), 0.75, 1.1)
  is3 = (hyp == N3).astype(int)
  run = np.zeros(n_ep)
  for i in range(1, n_ep):  # epochs into an N3 block (cheap: per epoch, not per sample)
    run[i] = run[i - 1] + 1 if is3[i] and is3[i - 1] else 0
  deep = np.where(hyp == N3, 0.85 + 0.25 * np.minimum(run, 4) / 4, 1.0)
  near3 = np.convolve(is3, [0.05, 0.1, 0.15, 0, 0.15, 0.1, 0.05], mode="same")
  deep = np.where(hyp == N2, 1.0 + near3, deep)
  for b in (1, 2):
    tab[:, b] *= np.where(hyp > 0, delta_f * homeo * deep, 1.0)
  tab[:, 4] *= np.where(hyp == W, 1.0 - 0.75 * eo_ep, 1.0)
  tab[:, 6] += np.where(hyp == W, 5.0 * eo_ep, 0.0)
  tab *= np.exp(0.1 * rng.standard_normal(tab.shape))
  sub_amp = np.exp(0.12 * rng.standard_normal())

  # ---- arousals (spontaneous here; respiratory ones added below)
  events = []
  ar_on, ar_dur = [], []

  # ---- body position: changes at wake/arousal times, supine favoured
  n_changes = max(1, rng.poisson(n / 3600 * 0.8))
  wake_s = np.flatnonzero(st == W)
  ch_t = (
      np.sort(rng.choice(wake_s, size=min(n_changes, len(wake_s)), replace=False))
      if len(wake_s)
      else []
  )
  codes = rng.choice(4, size=len(ch_t) + 1, p=[0.25, 0.45, 0.25, 0.05])
  position = np.repeat(codes, np.diff(np.r_[0, ch_t, n]).astype(int)).astype(float)

  # ---- respiratory events: inhomogeneous Poisson with refractory period
  mult = RESP_EVENT_MULT[st] * np.where(position == 1, 1.5, 1.0)
  mult[~sleep] = 0.0
  if mult.sum() > 0:
    mult *= sleep.sum() / mult.sum()
  rate = ahi / 3600.0
  rate /= max(0.3, 1.0 - rate * 40.0)  # compensate the refractory time (event + recovery ~40 s)
  lam = np.cumsum(mult * rate)
  p_apnea = float(np.clip(0.25 + 0.006 * ahi + rng.normal(0, 0.08), 0.05, 0.8))
  t = 0.0
  resp = []
  while lam.size and lam[-1] > 0:
    target = np.interp(t, np.arange(n), lam) + rng.exponential(1.0)
    if target >= lam[-1]:
      break
    t = float(np.searchsorted(lam, target))
    kind = "obstructive_apnea" if rng.random() < p_apnea else "hypopnea"
    dur = float(np.clip(rng.gamma(6, 3.0 if kind == "obstructive_apnea" else 3.8), 10, 60))
    dur *= 1.2 if st[int(t)] == REM else 1.0
    dur = round(dur, 1)
    t = round(t, 1)
    seg = st[int(t) : int(t + dur) + 1]
    if len(seg) and np.all(seg > 0) and t + dur + 40 < n:
      resp.append((kind, t, dur))
      events.append(Event(kind, t, dur))
      if rng.random() < (0.75 if kind == "obstructive_apnea" else 0.5):
        a0 = round(t + dur - rng.uniform(0, 2), 1)
        ar_on.append(a0)
        ar_dur.append(round(rng.uniform(4, 12), 1))
    t += dur + rng.uniform(8, 25)

  # spontaneous arousals
  spont = _poisson_times(rng, np.where(sleep, (6 + 0.1 * (age - 20)) / 3600, 0.0))
  for a0 in np.round(spont, 1):
    ar_on.append(a0)
    ar_dur.append(round(rng.uniform(3, 14), 1))
  order = np.argsort(ar_on)
  last_end = -1.0
  aro = np.zeros(n)
  for i in order:
    a0, d = ar_on[i], ar_dur[i]
    if a0 < last_end + 10 or a0 + d >= n or st[int(a0)] == W:
      continue
    events.append(Event("arousal", float(a0), float(d)))
    aro[int(a0) : int(np.ceil(a0 + d))] = 1.0
    last_end = a0 + d
  aro_s = _box(aro, 3)

  # limb movements: sporadic, plus periodic trains in some older sleepers
  lm_t = list(_poisson_times(rng, np.where(sleep, 4 / 3600, 0.0)))
  if age > 50 and rng.random() < 0.35:
    for c in _poisson_times(rng, np.where(st == N2, 1 / 3600, 0.0)):
      k = int(rng.integers(5, 25))
      lm_t += list(c + np.cumsum(rng.uniform(20, 40, k)))
  for t0 in np.round(np.sort(lm_t), 1):
    if t0 + 6 < n:
      events.append(Event("limb_movement", float(t0), round(float(rng.uniform(0.5, 5)), 1)))

  # ---- per-second envelopes
  def up(ep_vals, w=6):
    return _box(np.repeat(ep_vals, EPOCH_S), w)

  for j, b in enumerate(BANDS):
    env[b] = up(tab[:, j]) * sub_amp
  env["alpha"] = env["alpha"] + 12.0 * sub_amp * aro_s
  env["beta"] = env["beta"] + 4.0 * aro_s
  env["theta"] = env["theta"] + 3.0 * aro_s
  env["eo"] = eo
  env["sem"] = up(
      SEM_AMP[hyp]
      + np.where(hyp == W, 25.0 * (1 - eo_ep) * (np.arange(n_ep) < first_sleep + 1), 0.0),
      30,
  )
  emg_sub = np.exp(0.35 * rng.standard_normal())
  tonic = up(EMG_TONIC[hyp] * np.exp(0.15 * rng.standard_normal(n_ep)), 4)
  env["emg"] = emg_sub * tonic * (1 + 0.8 * eo) * (1 + 2.5 * aro_s)
  env["arousal"] = aro_s

  # ---- transient point processes (times in s)
  sp_rate = (
      np.select([st == N2, st == N3], [4.0, 1.0], 0.0)
      / 60
      * np.clip(1.3 - 0.008 * (age - 20), 0.5, 1.3)
  )
  kc_rate = np.select([st == N2, st == N3], [1.3, 0.3], 0.0) / 60
  points = {}
  sp_t = _poisson_times(rng, sp_rate * (1 - aro))
  points["spindle"] = (
      sp_t,
      rng.uniform(8, 20, len(sp_t)) * sub_amp,
      rng.choice([0.6, 1.0, 1.6], len(sp_t)),
  )
  kc_t = _poisson_times(rng, kc_rate)
  points["kcomplex"] = (kc_t, rng.uniform(60, 130, len(kc_t)) * delta_f * sub_amp)
  # REM bursts: clusters of saccades
  bursts = _poisson_times(rng, np.where(st == REM, 1 / 20, 0.0))
  k = rng.poisson(4, len(bursts)) + 1
  sac_t = (
      np.repeat(bursts, k) + np.concatenate([np.cumsum(rng.uniform(0.25, 0.9, kk)) for kk in k])
      if len(k)
      else np.zeros(0)
  )
  flips = np.where(rng.random(len(sac_t)) < 0.75, -1, 1)  # gaze mostly swings back and forth
  sac_a = rng.uniform(40, 150, len(sac_t)) * np.cumprod(flips) * rng.choice([-1, 1])
  # wake saccades and blinks scale with eyes-open fraction
  wsac = _poisson_times(rng, np.where(st == W, 0.35 * eo, 0.0))
  points["saccade"] = (
      np.r_[sac_t, wsac],
      np.r_[sac_a, rng.uniform(30, 120, len(wsac)) * rng.choice([-1, 1], len(wsac))],
  )
  bl = _poisson_times(rng, np.where(st == W, 0.25 * eo, 0.0))
  points["blink"] = (bl, rng.uniform(100, 250, len(bl)))
  tw = _poisson_times(rng, np.where(st == REM, 0.12, 0.0))
  points["twitch"] = (tw, rng.uniform(3, 10, len(tw)) * emg_sub)
  mv = _poisson_times(rng, np.where(st == W, 0.03 * eo, 0.0) + 0.3 * aro / 10)
  points["movement"] = (mv, rng.uniform(10, 30, len(mv)) * emg_sub)
  saw = _poisson_times(rng, np.where(st == REM, 1 / 45, 0.0))
  points["sawtooth"] = (saw, rng.uniform(15, 35, len(saw)) * sub_amp, rng.uniform(2, 6, len(saw)))

  # ---- respiration drives
  br_base = rng.uniform(13, 17) / 60  # Hz
  rate = br_base * BR_MULT[st] * (1 + BR_VAR[st] * _ou(rng, n, 15, 1.0))
  breath_phase = 2 * np.pi * np.r_[0.0, np.cumsum(np.maximum(rate, 0.05))]
  amp = np.exp(AMP_VAR[st] * _ou(rng, n, 8, 1.0))
  flow = amp.copy()
  thor = amp.copy()
  abdo = amp.copy()
  paradox = np.zeros(n)
  cap = np.ones(n)
  hr_evt = np.zeros(n)
  for kind, t0, d in resp:
    i0, i1 = int(t0), int(t0 + d)
    ramp = np.clip(np.arange(i1 - i0) / 2.0, 0, 1)
    if kind == "obstructive_apnea":
      flow[i0:i1] *= 1 - 0.93 * ramp
      cres = 1 + 0.3 * np.linspace(0, 1, i1 - i0)
      thor[i0:i1] *= cres
      abdo[i0:i1] *= cres
      paradox[i0:i1] = np.pi * 0.85 * ramp
    else:
      f = rng.uniform(0.35, 0.6)
      flow[i0:i1] *= 1 - (1 - f) * ramp
      cap[i0:i1] = 1 - 0.5 * ramp
      thor[i0:i1] *= 0.75
      abdo[i0:i1] *= 0.75
      paradox[i0:i1] = 0.3 * ramp
    rec = np.exp(-np.arange(10) / 4.0)
    j = slice(i1, i1 + 10)
    for arr, g in ((flow, 0.9), (thor, 0.6), (abdo, 0.6)):
      arr[j] *= 1 + g * rec[: len(arr[j])]
    hr_evt[i0:i1] -= 3.0
    hr_evt[j] += 10.0 * rec[: len(hr_evt[j])]
  big = 1 + 0.5 * aro_s
  env["flow"] = flow * big
  env["thor"] = thor * big
  env["abdo"] = abdo * big
  env["paradox"] = _box(paradox, 3)
  env["cap"] = cap

  # ---- heart rate (bpm) per second
  hr_base = rng.uniform(54, 72) + 0.1 * (bmi - 25)
  hr = hr_base + _box(HR_OFFSET[st], 20) + HR_VAR[st] * _ou(rng, n, 20, 1.0)
  hr += 2.0 * np.sin(2 * np.pi * 0.1 * np.arange(n) + rng.uniform(0, 6.3))
  hr += 11.0 * np.r_[np.zeros(2), aro_s[:-2]] + hr_evt
  env["hr"] = np.clip(hr, 40, 140)
  env["rsa"] = np.full(n, float(np.clip(4.5 - 0.04 * (age - 20), 1.0, 5.0)))

  # ---- SpO2 (%), integer-valued like real oximeters
  base = float(
      np.clip(97.5 - 0.06 * (bmi - 25) - 0.02 * (age - 40) + rng.normal(0, 0.4), 94.5, 98.5)
  )
  sp = base + _ou(rng, n, 30, 0.35) - 0.4 * (st == REM)
  desats = []
  for kind, t0, d in resp:
    if rng.random() > (0.95 if kind == "obstructive_apnea" else 0.75):
      continue
    lag = rng.uniform(20, 30)
    depth = (
        rng.uniform(3, 6)
        + (0.12 * d if kind == "obstructive_apnea" else 0.0)
        + 0.05 * max(bmi - 25, 0)
    )
    depth = float(np.clip(depth, 3, 12))
    a, b = t0 + lag, t0 + d + lag
    tau = rng.uniform(4, 7)
    tt = np.arange(int(a), min(n, int(b + 5 * tau)))
    shape = np.where(tt < b, (tt - a) / max(b - a, 1), np.exp(-(tt - b) / tau))
    sp[tt] -= depth * np.clip(shape, 0, 1)
    desats.append((round(a, 1), round(b - a + tau, 1), int(tt[0]), int(min(n - 1, b + 3))))
  sp = np.clip(np.round(sp), 50, 100)
  base_r = float(np.round(base))
  for a, d, i0, i1 in desats:
    events.append(
        Event("desaturation", a, d, spo2_nadir=float(sp[i0 : i1 + 1].min()), spo2_baseline=base_r)
    )

  u, frac, pos = rng.random(3)  # drawn unconditionally: the probability changes nothing else
  emg_dead = None
  if u < emg_disconnect_prob:
    d = (0.1 + 0.2 * frac) * n
    s0 = (0.2 + 0.7 * pos) * (n - d)
    emg_dead = (float(s0), float(s0 + d))

  events.sort(key=lambda e: (e.onset_s, e.kind))
  return Latent(
      hyp=hyp,
      n_sec=n,
      seed=int(rng.integers(2**62)),
      env=env,
      events=events,
      points=points,
      spo2=sp,
      position=position,
      breath_phase=breath_phase,
      alpha_hz=float(np.clip(10.3 - 0.012 * (age - 20) + rng.normal(0, 0.4), 8.5, 11.5)),
      emg_dead=emg_dead,
  )
