"""Quality control: per-epoch and per-channel checks, per-recording verdicts, the QC report.

Checks run on each channel's raw samples at its native rate (in canonical units), epoch by epoch
(30-s epochs aligned with the hypnogram), plus an amplitude check on the filtered signal at the
canonical rate. Every flagged epoch is masked (zeroed, mask false); a channel with too many flagged
epochs, an invalid sampling rate or no data is masked as a whole. Nothing flagged is silently used.
The per-modality thresholds are on each `Modality` (`sleepjax.modalities`, `Modality.qc`).

Epoch flags (bit k of the per-epoch code; names as in the report):

  missing       epoch not fully covered by the signal (short or truncated channel)
  nonfinite     NaN/Inf samples (e.g. EDF+D gaps)
  flat          std below the modality's floor, >= 95 % of consecutive samples identical, or inside
                a run of identical values longer than the modality's limit (flat line, dead sensor)
  clipped       >= 5 % of samples at an inferred (or given) physical rail
  disconnected  >= 50 % of samples at the rails (stuck at / swinging rail to rail)
  range         implausible level (outside `level_range`): SpO2 outside 50-100 %, heart rate
                outside 30-200 bpm
  amplitude     >= 10 % of the filtered epoch beyond the modality's limit (EEG 1000 uV ...)
  hr_gap        derived heart rate: too few valid beats (or ECG masked) in the epoch
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib

import numpy as np

from sleepjax.modalities import CANONICAL, EPOCH_SECONDS

FLAGS = ("missing", "nonfinite", "flat", "clipped", "disconnected", "range", "amplitude", "hr_gap")
BIT = {name: np.uint16(1 << k) for k, name in enumerate(FLAGS)}

@dataclasses.dataclass
class QCConfig:
  min_duration_s: float = 3600.0  # shorter recordings are skipped
  max_bad_fraction: float = 0.5  # a channel with more flagged epochs is masked as a whole
  flat_same_fraction: float = 0.95  # fraction of identical consecutive samples that is flat
  rel_flat: float = 1e-3  # epoch std below this fraction of the channel's median epoch std
  clip_fraction: float = 0.05  # fraction of an epoch at a rail that is clipping
  disconnected_fraction: float = 0.5  # ... that is a disconnected / saturated sensor
  amplitude_fraction: float = 0.1  # fraction of an epoch beyond the modality's max_amplitude
  length_tolerance_epochs: int = 2  # annotation/signal length difference accepted silently
  max_length_mismatch: float = 0.1  # larger relative difference: recording skipped
  hr_min_valid: float = 2 / 3  # derived heart rate: valid fraction an epoch needs


@dataclasses.dataclass
class ChannelQC:
  """QC outcome of one canonical channel in one recording."""
  modality: str
  channel: str
  source: str = ""  # input label, or "derived:ecg"
  rate: float = 0.0  # native rate (Hz)
  status: str = "absent"  # ok | masked | absent
  reasons: list[str] = dataclasses.field(default_factory=list)  # why masked / notes
  n_epochs: int = 0
  epochs_masked: int = 0
  epoch_flags: dict[str, int] = dataclasses.field(default_factory=dict)  # flag -> epochs

  @property
  def masked_fraction(self) -> float:
    return self.epochs_masked / self.n_epochs if self.n_epochs else 1.0

  def to_dict(self) -> dict:
    return {"status": self.status, "source": self.source, "rate": self.rate,
            "reasons": list(self.reasons), "masked_fraction": round(self.masked_fraction, 4),
            "epoch_flags": dict(self.epoch_flags)}


# ------------------------------------------------------------------------------ channel checks
def check_rate(rate: float, modality: str) -> str | None:
  """A reason the sampling rate is unusable for `modality`, or None."""
  if not (isinstance(rate, (int, float, np.number)) and math.isfinite(rate) and rate > 0):
    return f"invalid sampling rate {rate!r}"
  lowest = CANONICAL[modality].qc.min_rate
  if rate < lowest:
    return f"sampling rate {rate:g} Hz below the {lowest:g} Hz {modality} needs"
  return None


def epoch_bounds(rate: float, n_epochs: int) -> np.ndarray:
  """Sample index of each epoch boundary [n_epochs + 1] at `rate` (handles non-integer rates)."""
  return np.round(np.arange(n_epochs + 1) * (EPOCH_SECONDS * rate)).astype(np.int64)


def _per_epoch_sum(a: np.ndarray, bounds: np.ndarray) -> np.ndarray:
  """Sums of `a` over [bounds[i], bounds[i+1]) for each complete epoch (bounds within a)."""
  if len(bounds) < 2:
    return np.zeros(0)
  return np.add.reduceat(a[:bounds[-1]], bounds[:-1])


def _run_epochs(eq: np.ndarray, eq_counts: np.ndarray, min_len: int, bounds: np.ndarray
                ) -> np.ndarray:
  """Epochs overlapping a run of >= min_len identical samples; eq[i] = x[i+1] == x[i],
  eq_counts its per-epoch sums. Only stretches whose epochs hold enough repeats are scanned."""
  n_ep = len(bounds) - 1
  out = np.zeros(n_ep, bool)
  if min_len < 2:
    return out
  # A run of min_len samples puts >= (min_len - 1) / 2 repeats in one of the epochs it touches
  # (or all of them in one shorter-than-run epoch).
  need = min((min_len - 1) // 2, int(np.diff(bounds).min()) // 2) if n_ep else 0
  cand = eq_counts >= max(need, 1)
  if not cand.any():
    return out
  cand = cand | np.r_[cand[1:], False] | np.r_[False, cand[:-1]]
  first, last = np.flatnonzero(cand)[[0, -1]]
  lo, hi = bounds[first], min(bounds[last + 1], len(eq))
  padded = np.concatenate([[0], eq[lo:hi].view(np.int8), [0]])
  edges = np.flatnonzero(np.diff(padded)) + lo
  starts, ends = edges[0::2], edges[1::2] + 1  # sample run [start, end)
  long = (ends - starts) >= min_len
  for s, e in zip(starts[long], ends[long]):  # few runs: cheap
    first = np.searchsorted(bounds, s, side="right") - 1
    last = np.searchsorted(bounds, e, side="left")
    out[max(first, 0):min(last, n_ep)] = True
  return out


def check_raw(x: np.ndarray, rate: float, modality: str, n_epochs: int,
              config: QCConfig | None = None, rails: tuple[float, float] | None = None
              ) -> np.ndarray:
  """Per-epoch flag codes (uint16 [n_epochs]) of a raw channel at its native `rate`.

  `rails` is the channel's physical (min, max) in canonical units when known; otherwise the
  channel's extreme values count as rails when at least 1e-4 of the samples, and at least one
  second's worth, sit on them in runs of two or more equal samples (a natural signal reaches its
  extreme once or a few times, a sampled sine at isolated samples; a clipped one sits there).
  Non-finite samples are flagged and take part in no other check.
  """
  cfg = config or QCConfig()
  spec = CANONICAL[modality]
  codes = np.zeros(n_epochs, np.uint16)
  bounds = epoch_bounds(rate, n_epochs)
  full = int(np.searchsorted(bounds[1:], len(x), side="right"))  # epochs fully covered
  codes[full:] |= BIT["missing"]
  if full == 0:
    return codes
  b = bounds[:full + 1]
  seg = np.asarray(x[:b[-1]], dtype=np.float64)
  n_per = np.diff(b).astype(np.float64)
  finite = np.isfinite(seg)
  if not finite.all():
    bad = _per_epoch_sum(~finite, b) > 0
    codes[:full][bad] |= BIT["nonfinite"]
    fill = np.median(seg[finite]) if finite.any() else 0.0
    seg = np.where(finite, seg, fill)
  if spec.qc.level_range is not None:
    lo, hi = spec.qc.level_range
    out = ((seg < lo) | (seg > hi)) & finite
    codes[:full][_per_epoch_sum(out, b) > 0] |= BIT["range"]
  # Flat lines: std floor, relative std, identical consecutive samples, long identical runs.
  eq = np.empty(len(seg), bool)  # eq[i]: x[i + 1] == x[i]; last sample False
  np.equal(seg[1:], seg[:-1], out=eq[:-1])
  eq[-1] = False
  eq_counts = _per_epoch_sum(eq, b)
  run = int(round(spec.qc.flat_run_s * rate))
  flat = _run_epochs(eq, eq_counts, run, b)
  if not spec.level:  # level signals step and sit at ceilings: no flat-fraction/clipping checks
    centred = seg - seg[::16].mean()
    s1 = _per_epoch_sum(centred, b)
    np.square(centred, out=centred)
    s2 = _per_epoch_sum(centred, b)
    del centred
    std = np.sqrt(np.maximum(s2 / n_per - (s1 / n_per) ** 2, 0.0))
    ref = np.median(std)
    flat |= (std <= cfg.rel_flat * ref) | (std == 0)
    if spec.qc.min_std is not None:
      flat |= std < spec.qc.min_std
    flat |= eq_counts / n_per >= cfg.flat_same_fraction
    # Clipping / disconnection at the rails.
    if rails is not None:
      lo, hi = rails
    elif finite.any():
      lo, hi = seg[finite].min(), seg[finite].max()
    else:
      lo = hi = 0.0
    if hi > lo:
      at_rail = np.zeros(len(seg), bool)
      need = max(rate, 1e-4 * len(seg))
      if rails is None:  # clipped samples sit on the rail in runs: a sampled peak does not
        flat_top = eq.copy()
        flat_top[1:] |= eq[:-1]
      for side in (seg >= hi, seg <= lo):
        if rails is None:
          side &= flat_top
        if rails is not None or side.sum() >= need:
          at_rail |= side & finite
      if at_rail.any():
        frac = _per_epoch_sum(at_rail, b) / n_per
        codes[:full][frac >= cfg.clip_fraction] |= BIT["clipped"]
        codes[:full][frac >= cfg.disconnected_fraction] |= BIT["disconnected"]
  codes[:full][flat] |= BIT["flat"]
  return codes


def check_amplitude(y: np.ndarray, rate: float, modality: str, n_epochs: int,
                    config: QCConfig | None = None) -> np.ndarray:
  """Per-epoch `amplitude` flags of a filtered channel at its canonical `rate`."""
  cfg = config or QCConfig()
  codes = np.zeros(n_epochs, np.uint16)
  limit = CANONICAL[modality].qc.max_amplitude
  if limit is None or n_epochs == 0:
    return codes
  spe = int(round(rate * EPOCH_SECONDS))
  m = min(n_epochs, len(y) // spe)
  big = (np.abs(y[:m * spe]) > limit).reshape(m, spe).mean(axis=1)
  codes[:m][big >= cfg.amplitude_fraction] |= BIT["amplitude"]
  return codes


def flag_counts(codes: np.ndarray) -> dict[str, int]:
  return {name: int(np.count_nonzero(codes & BIT[name])) for name in FLAGS
          if np.any(codes & BIT[name])}


def channel_verdict(qc: ChannelQC, codes: np.ndarray, config: QCConfig | None = None
                    ) -> np.ndarray:
  """Fills `qc` from the epoch codes; returns the per-epoch usable mask (all False if masked)."""
  cfg = config or QCConfig()
  usable = codes == 0
  qc.n_epochs = len(codes)
  qc.epoch_flags = flag_counts(codes)
  bad = len(codes) - int(usable.sum())
  if qc.status == "masked":  # already masked (e.g. invalid rate)
    usable[:] = False
  elif len(codes) == 0 or bad > cfg.max_bad_fraction * len(codes) or not usable.any():
    qc.status = "masked"
    top = sorted(qc.epoch_flags.items(), key=lambda kv: -kv[1])
    qc.reasons.append("bad in {:.0%} of epochs ({})".format(
        bad / max(len(codes), 1), ", ".join(f"{k} {v}" for k, v in top)))
    usable[:] = False
  else:
    qc.status = "ok"
  qc.epochs_masked = int(len(codes) - usable.sum())
  return usable


# ----------------------------------------------------------------------------- recording checks
@dataclasses.dataclass
class LengthCheck:
  n_epochs: int  # epochs to use: the shorter of signal and annotation
  mismatch: int  # annotation epochs - signal epochs
  note: str | None  # a description of the mismatch, if any
  fatal: bool  # mismatch too large to trust the pairing of signal and annotations


def check_lengths(n_epochs_signal: int, n_epochs_annotation: int,
                  config: QCConfig | None = None) -> LengthCheck:
  """Compares the epoch counts of the signal and of the hypnogram."""
  cfg = config or QCConfig()
  diff = int(n_epochs_annotation) - int(n_epochs_signal)
  n = max(0, min(int(n_epochs_signal), int(n_epochs_annotation)))
  if abs(diff) <= cfg.length_tolerance_epochs:
    return LengthCheck(n, diff, None, False)
  what = "overrun" if diff > 0 else "stop short of"
  note = (f"annotations {what} the signal by {abs(diff)} epochs "
          f"({n_epochs_annotation} annotated vs {n_epochs_signal} in the signal)")
  fatal = abs(diff) > cfg.max_length_mismatch * max(n_epochs_signal, 1)
  return LengthCheck(n, diff, note, fatal)


def recording_verdict(channel_qc: list[ChannelQC], *, duration_s: float | None = None,
                      stages: np.ndarray | None = None, lengths: LengthCheck | None = None,
                      required: tuple[str, ...] = (), config: QCConfig | None = None
                      ) -> tuple[str, list[str]]:
  """("ok" | "skip", reasons). Skips too-short records, records with no usable modality (or a
  `required` modality unusable), no scored epochs, or annotations that do not fit the signal."""
  cfg = config or QCConfig()
  reasons = []
  if duration_s is not None and duration_s < cfg.min_duration_s:
    reasons.append(f"too short: {duration_s / 3600:.2f} h < {cfg.min_duration_s / 3600:.2f} h")
  if lengths is not None and lengths.fatal:
    reasons.append(f"length mismatch: {lengths.note}")
  if stages is not None and not np.any(np.asarray(stages) >= 0):
    reasons.append("no scored epochs")
  usable = {q.modality for q in channel_qc if q.status == "ok"}
  if not usable:
    reasons.append("no usable modality")
  for m in required:
    if m not in usable:
      reasons.append(f"required modality {m} unusable")
  return ("skip" if reasons else "ok"), reasons


# ---------------------------------------------------------------------------------- the report
def report_row(recording_id: str, channel_qc: list[ChannelQC], verdict: str,
               reasons: list[str], n_epochs: int = 0, notes: list[str] = (),
               epoch_mask: dict[str, np.ndarray] | None = None, **extra) -> dict:
  """One recording's row of the QC report (JSON-serialisable).

  `masked_fraction[modality]` is the fraction of epochs in which no channel of the modality is
  usable, from `epoch_mask` (modality -> bool [n_epochs, C], `Harmonised.epoch_mask`) when given,
  else the smallest per-channel fraction. Per-channel fractions are under `channels`.
  """
  channels, masked = {}, {}
  for q in channel_qc:
    channels.setdefault(q.modality, {})[q.channel] = q.to_dict()
  for m, chans in channels.items():
    if epoch_mask is not None and m in epoch_mask and len(epoch_mask[m]):
      masked[m] = round(1.0 - float(np.asarray(epoch_mask[m]).any(axis=1).mean()), 4)
    else:
      masked[m] = min((c["masked_fraction"] for c in chans.values()), default=1.0)
  return {"recording_id": recording_id, "verdict": verdict, "reasons": list(reasons),
          "notes": list(notes), "n_epochs": int(n_epochs), "channels": channels,
          "masked_fraction": masked, **extra}


def error_row(recording_id: str, error: str) -> dict:
  """Row for a recording that could not be processed at all (unreadable file ...)."""
  return report_row(recording_id, [], "skip", [error])


def _modality_order(rows: list[dict]) -> list[str]:
  seen = {m for r in rows for m in r.get("channels", {})}
  return [m for m in CANONICAL if m in seen] + sorted(seen - set(CANONICAL))


def write_qc_report(rows: list[dict], out_dir, notes: list[str] = ()
                    ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `qc.json` (full rows + a summary + notes about the cohort's files) and `qc.csv` (one
  flat row per recording, with the channel labels no channel map matched).

  The same rows give the same bytes (keys sorted). Each file is written under a temporary name and
  renamed, so a killed run never leaves a half-written report.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = sorted(rows, key=lambda r: r["recording_id"])
  modalities = _modality_order(rows)
  summary = {"recordings": len(rows), "ok": sum(r["verdict"] == "ok" for r in rows),
             "skipped": sum(r["verdict"] != "ok" for r in rows)}
  json_path, csv_path = out / "qc.json", out / "qc.csv"
  tmp = out / "qc.json.tmp"
  body = {"summary": summary, "recordings": rows}
  if notes:
    body["notes"] = list(notes)
  tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
  os.replace(tmp, json_path)
  tmp = out / "qc.csv.tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["recording_id", "verdict", "reasons", "notes", "n_epochs", "unmatched_labels"]
               + [f"{m}_{k}" for m in modalities for k in ("channels", "masked_fraction")])
    for r in rows:
      cells = [r["recording_id"], r["verdict"], "; ".join(r["reasons"]),
               "; ".join(r.get("notes", [])), r.get("n_epochs", 0),
               " | ".join(r.get("unmatched", []))]
      for m in modalities:
        chans = r.get("channels", {}).get(m, {})
        canonical = list(CANONICAL[m].channels) if m in CANONICAL else []
        order = [c for c in canonical if c in chans] + sorted(set(chans) - set(canonical))
        cells.append(" ".join(
            f"{c}:{chans[c]['status']}"
            + (f"({'; '.join(chans[c]['reasons'])})" if chans[c]["reasons"] else "")
            for c in order))
        cells.append(r.get("masked_fraction", {}).get(m, ""))
      w.writerow(cells)
  os.replace(tmp, csv_path)
  return csv_path, json_path
