"""Harmonisation: canonical channels -> QC, filtered, resampled, normalised arrays on 30-s epochs.

Input is a dict {(modality, channel): Signal} of signals already in canonical units (what
`data_prep.channels.resolve_channels` returns), or that tool's result itself. Per recording:

1. the mains frequency (50/60 Hz) is detected on the ExG channels (`signal.detect_line_frequency`);
2. each channel is checked on its raw samples (`qc.check_raw`: rate, NaN/Inf, flat, clipping,
   disconnection, implausible range, missing data), flagged epochs are blanked, then it is
   resampled to the canonical rate (anti-aliased), band-passed + notched (zero-phase), and checked
   for sustained implausible amplitude (`qc.check_amplitude`);
3. `heart_rate`, when requested and not recorded directly (or recorded but unusable), is derived
   from ECG R peaks (`signal.detect_r_peaks`, `signal.heart_rate_from_beats`);
4. each usable channel is normalised per recording: robust median/IQR over its usable epochs, or
   the fixed constants of modalities whose absolute level matters (SpO2, heart rate: the `Modality`'s
   `fixed_scaling`); values are clipped to +-CLIP; masked epochs and masked channels are zeros with
   mask False.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_prep import qc as qc_lib
from data_prep import signal as sig_lib
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS

CLIP = 20.0  # normalised values beyond +-CLIP are clipped (also keeps float16 finite)
ECG_KEY = ("ecg", "ecg")
HR_KEY = ("heart_rate", "hr")


@dataclasses.dataclass
class Harmonised:
  signals: dict[str, np.ndarray]  # modality -> float32 [C, n_epochs * rate * 30], normalised
  epoch_mask: dict[str, np.ndarray]  # modality -> bool [n_epochs, C]: channel usable in epoch
  present: dict[str, np.ndarray]  # modality -> bool [C]: channel usable at all
  stats: dict[str, dict]  # modality -> {"center": [C], "scale": [C], "method": [C]}
  qc: list[qc_lib.ChannelQC]  # one per canonical channel of the requested modalities
  unmatched: list[str] = dataclasses.field(default_factory=list)  # labels that mapped nowhere
  line_freq: float | None = None  # detected mains frequency (Hz), None if none stood out
  r_peaks: np.ndarray | None = None  # ECG beat times (s) when heart rate was derived from them


@dataclasses.dataclass
class _Channel:
  y: np.ndarray | None  # filtered, canonical rate, canonical units, [n] (None if masked)
  usable: np.ndarray  # bool [n_epochs]
  qc: qc_lib.ChannelQC


# ------------------------------------------------------------------------------- one channel
def _blank(x: np.ndarray, codes: np.ndarray, rate: float, fill: float) -> np.ndarray:
  """`x` with non-finite samples and samples of flagged epochs set to `fill`."""
  bad = codes != 0
  finite = np.isfinite(x)
  if not bad.any() and finite.all():
    return x
  x = np.where(finite, x, fill)
  if bad.any():
    bounds = qc_lib.epoch_bounds(rate, len(codes))
    bounds = np.minimum(bounds, len(x))
    sample_bad = np.repeat(bad, np.diff(bounds))
    x[:len(sample_bad)][sample_bad] = fill
  return x


def _process(sig, modality: str, channel: str, n_epochs: int, line_freq: float | None,
             cfg: qc_lib.QCConfig) -> _Channel:
  spec = CANONICAL[modality]
  n = n_epochs * spec.samples_per_epoch
  rate = getattr(sig, "rate", None)
  q = qc_lib.ChannelQC(modality, channel, source=str(getattr(sig, "label", "")),
                       rate=float(rate) if isinstance(rate, (int, float, np.number)) else 0.0)
  x = np.asarray(getattr(sig, "data", ()), dtype=np.float64).ravel()
  problem = qc_lib.check_rate(rate, modality)
  if problem is None and len(x) == 0:
    problem = "empty signal"
  if problem is not None:
    q.status = "masked"
    q.reasons.append(problem)
    usable = qc_lib.channel_verdict(q, np.full(n_epochs, qc_lib.BIT["missing"]), cfg)
    return _Channel(None, usable, q)
  rate = float(rate)
  rails = getattr(sig, "physical_range", None)
  codes = qc_lib.check_raw(x, rate, modality, n_epochs, cfg, rails)
  level = spec.level
  if level:
    fill = spec.fixed_scaling[0]
  else:
    sub = x[::16]
    sub = sub[np.isfinite(sub)]
    fill = float(sub.mean()) if sub.size else 0.0
  x = _blank(x - (0.0 if level else fill), codes, rate, 0.0 if not level else fill)
  if sig_lib.notch_before_resampling(modality, line_freq, rate, spec.rate):
    x = sig_lib.notch(x, rate, line_freq)
  y = sig_lib.resample(x, rate, spec.rate, level=level)
  y = sig_lib.apply_filter(y, modality, spec.rate, line_freq)
  if len(y) < n:
    y = np.pad(y, (0, n - len(y)), mode="edge" if len(y) else "constant")
  y = y[:n]
  codes = codes | qc_lib.check_amplitude(y, spec.rate, modality, n_epochs, cfg)
  usable = qc_lib.channel_verdict(q, codes, cfg)
  return _Channel(y if q.status == "ok" else None, usable, q)


def _derive_heart_rate(ecg: _Channel, n_epochs: int,
                       cfg: qc_lib.QCConfig) -> tuple[_Channel, np.ndarray | None]:
  """heart_rate from R peaks of the (filtered, canonical-rate) ECG; also the beat times (s)."""
  spec = CANONICAL["heart_rate"]
  q = qc_lib.ChannelQC("heart_rate", "hr", source=f"derived:ecg({ecg.qc.source})",
                       rate=float(CANONICAL["ecg"].rate))
  if ecg.y is None or n_epochs == 0:
    q.status = "masked"
    q.reasons.append("ecg unusable: " + ("; ".join(ecg.qc.reasons) or "no epochs"))
    return _Channel(None, qc_lib.channel_verdict(q, np.full(n_epochs, qc_lib.BIT["hr_gap"]),
                                                 cfg), q), None
  ecg_rate = CANONICAL["ecg"].rate
  beats = sig_lib.detect_r_peaks(ecg.y, ecg_rate, prefiltered=True)
  epoch = np.minimum((beats // EPOCH_SECONDS).astype(np.int64), n_epochs - 1)
  beats = beats[ecg.usable[epoch]] if len(beats) else beats
  n = n_epochs * spec.samples_per_epoch
  hr, valid = sig_lib.heart_rate_from_beats(beats, n, spec.rate)
  frac = valid.reshape(n_epochs, spec.samples_per_epoch).mean(axis=1)
  codes = np.where(frac >= cfg.hr_min_valid, 0, qc_lib.BIT["hr_gap"]).astype(np.uint16)
  codes[~ecg.usable] |= qc_lib.BIT["hr_gap"]
  usable = qc_lib.channel_verdict(q, codes, cfg)
  q.reasons.append(f"{len(beats)} beats")
  return _Channel(hr.astype(np.float64) if q.status == "ok" else None, usable, q), beats


# ------------------------------------------------------------------------------- the recording
def harmonise(signals, n_epochs: int, modalities: list[str], *,
              config: qc_lib.QCConfig | None = None, line_freq="auto") -> Harmonised:
  """QC, filters, resamples and normalises canonical channels onto `n_epochs` 30-s epochs.

  `signals`: {(modality, channel): Signal} in canonical units (`Signal` has label, rate, unit,
  data and optionally physical_range in canonical units), or an object with such a `.signals`
  dict (and optionally `.unmatched`), e.g. `channels.resolve_channels(rec)`.
  `line_freq`: "auto" (detect), a frequency in Hz, or None (no notch).
  """
  cfg = config or qc_lib.QCConfig()
  unmatched: list[str] = []
  if hasattr(signals, "signals"):  # channels.Resolved
    unmatched = list(getattr(signals, "unmatched", []))
    signals = signals.signals
  n_epochs = max(int(n_epochs), 0)
  wanted = [(m, c) for m in modalities for c in CANONICAL[m].channels]
  need_ecg = "heart_rate" in modalities and ECG_KEY in signals
  if line_freq == "auto":
    exg = [(np.asarray(s.data), float(s.rate)) for k, s in signals.items()
           if (k in wanted or (need_ecg and k == ECG_KEY)) and CANONICAL[k[0]].notch
           and qc_lib.check_rate(s.rate, k[0]) is None]
    line_freq = sig_lib.detect_line_frequency(exg)
  processed: dict[tuple[str, str], _Channel] = {}
  for key in wanted:
    if key == HR_KEY:
      continue
    if key in signals:
      processed[key] = _process(signals[key], *key, n_epochs, line_freq, cfg)
  r_peaks = None
  if "heart_rate" in modalities:
    direct = None
    if HR_KEY in signals:
      direct = _process(signals[HR_KEY], *HR_KEY, n_epochs, line_freq, cfg)
      processed[HR_KEY] = direct
    if (direct is None or direct.qc.status != "ok") and ECG_KEY in signals:
      ecg = processed.get(ECG_KEY) or _process(signals[ECG_KEY], *ECG_KEY, n_epochs, line_freq,
                                               cfg)
      derived, r_peaks = _derive_heart_rate(ecg, n_epochs, cfg)
      if direct is not None:
        derived.qc.reasons.insert(0, f"direct channel {direct.qc.source} masked ("
                                  + "; ".join(direct.qc.reasons) + ")")
      processed[HR_KEY] = derived

  out_signals, epoch_mask, present, stats, qcs = {}, {}, {}, {}, []
  for m in modalities:
    spec = CANONICAL[m]
    spe = spec.samples_per_epoch
    n_ch = len(spec.channels)
    out = np.zeros((n_ch, n_epochs * spe), np.float32)
    mask = np.zeros((n_epochs, n_ch), bool)
    center, scale, method = [0.0] * n_ch, [1.0] * n_ch, ["none"] * n_ch
    for c, channel in enumerate(spec.channels):
      ch = processed.get((m, channel))
      if ch is None:
        qcs.append(qc_lib.ChannelQC(m, channel, status="absent", n_epochs=n_epochs,
                                    epochs_masked=n_epochs))
        continue
      qcs.append(ch.qc)
      if ch.y is None:
        continue
      usable = ch.usable
      if spec.fixed_scaling is not None:
        center[c], scale[c] = spec.fixed_scaling
        method[c] = "fixed"
      else:
        center[c], scale[c] = sig_lib.robust_stats(ch.y, np.repeat(usable, spe)
                                                   if not usable.all() else None)
        method[c] = "robust"
      z = np.clip((ch.y - center[c]) / scale[c], -CLIP, CLIP).astype(np.float32)
      z.reshape(n_epochs, spe)[~usable] = 0.0
      out[c] = z
      mask[:, c] = usable
    out_signals[m], epoch_mask[m], present[m] = out, mask, mask.any(axis=0)
    stats[m] = {"center": center, "scale": scale, "method": method}
  return Harmonised(out_signals, epoch_mask, present, stats, qcs, unmatched,
                    None if line_freq is None else float(line_freq), r_peaks)
