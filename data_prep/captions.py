"""Multilevel captions (SleepLM): per-epoch captions in five groups and a night-level summary.

Every number a caption states is a feature value (`data_prep.features`) printed at a fixed precision
(FORMATS); a NaN feature (absent or unusable channel) produces no statement about it, never a
number. Each statement has several paraphrase templates; which one is used comes from a numpy
Generator seeded with (seed, epoch index), so the same features and seed always give the same text
and another seed rewords it. `render_epoch` / `render_night` also return, for each number in the
text, the feature it came from (`Caption.numbers`), which the tests use to check every number.

Numbers never touch letters: labels such as "C4-M1", "N2" or "SpO2" carry digits inside words, and a
stated value is always a standalone token ("12 %", "61 bpm").
"""

from __future__ import annotations

import dataclasses
import math
import re
import string

import numpy as np

from data_prep.features import DERIVATIONS, FEATURE_NAMES, INDEX, POSITIONS
from sleepjax.modalities import EVENTS

GROUPS = ("stage_event", "brain", "cardiac", "respiratory", "somatic")

# feature -> (printf format, scale applied before printing)
FORMATS = {
    **{f"eeg_{d}_{b}": ("%.0f", 100.0) for d in DERIVATIONS
       for b in ("delta", "theta", "alpha", "sigma", "beta")},
    **{f"eeg_{d}_{b}": ("%.0f", 1.0) for d in DERIVATIONS for b in ("spindles", "slow_waves")},
    **{f"{k}_{s}": ("%.0f", 1.0) for k in EVENTS for s in ("count", "onset_s", "offset_s")},
    "eog_slow_power": ("%.0f", 1.0), "eog_rapid_power": ("%.0f", 1.0), "eog_rems": ("%.0f", 1.0),
    "emg_rms": ("%.1f", 1.0), "emg_median_freq": ("%.0f", 1.0), "emg_bursts": ("%.0f", 1.0),
    "hr_mean": ("%.0f", 1.0), "hr_min": ("%.0f", 1.0), "hr_max": ("%.0f", 1.0),
    "hr_trend": ("%.1f", 1.0), "hr_rmssd": ("%.0f", 1.0),
    "spo2_mean": ("%.1f", 1.0), "spo2_min": ("%.0f", 1.0), "spo2_desats": ("%.0f", 1.0),
    "effort_rate": ("%.0f", 1.0), "airflow_rate": ("%.0f", 1.0),
    "effort_ibi_cv": ("%.0f", 100.0), "airflow_ibi_cv": ("%.0f", 100.0),
    "flow_flatness": ("%.2f", 1.0),
    # night summary keys
    "tst_min": ("%.0f", 1.0), "tib_min": ("%.0f", 1.0), "efficiency_pct": ("%.1f", 1.0),
    "sleep_latency_min": ("%.0f", 1.0), "rem_latency_min": ("%.0f", 1.0), "waso_min": ("%.0f", 1.0),
    "n1_pct": ("%.1f", 1.0), "n2_pct": ("%.1f", 1.0), "n3_pct": ("%.1f", 1.0),
    "rem_pct": ("%.1f", 1.0), "ahi": ("%.1f", 1.0), "odi": ("%.1f", 1.0),
    "arousal_index": ("%.1f", 1.0), "spo2_min_night": ("%.0f", 1.0),
}

# the per-epoch quantities a caption can state (FORMATS also holds the night summary's keys)
EPOCH_QUANTITIES = tuple(k for k in FORMATS if k in INDEX)

# the features each group's captions are written from; two epochs' captions of a group say the
# same thing (`content`) when these agree at the printed precision (`content_grid`)
GROUP_FEATURES = {
    "stage_event": ("stage",
                    *(f"{k}_{s}" for k in EVENTS for s in ("count", "onset_s", "offset_s"))),
    "brain": (*(f"eeg_{d}_{b}" for d in DERIVATIONS for b in ("delta", "theta", "alpha", "sigma",
                                                              "beta", "spindles", "slow_waves")),
              "eog_slow_power", "eog_rapid_power", "eog_rems"),
    "cardiac": ("hr_mean", "hr_min", "hr_max", "hr_trend", "hr_rmssd"),
    "respiratory": ("airflow_rate", "effort_rate", "airflow_ibi_cv", "effort_ibi_cv", "spo2_mean",
                    "spo2_min", "spo2_desats", "flow_flatness"),
    "somatic": ("emg_rms", "emg_median_freq", "emg_bursts", "position"),
}


def content_grid() -> tuple[np.ndarray, np.ndarray]:
  """(stated [groups, F]: the feature is part of the group's content; per_unit [F]: steps of the
  printed precision per unit of the feature (scale x 10^decimals; 1 for codes)), F in
  `FEATURE_NAMES` order: round(value x per_unit) is what a caption can say about a feature."""
  stated = np.array([[n in GROUP_FEATURES[g] for n in FEATURE_NAMES] for g in GROUPS])
  per_unit = np.array([FORMATS[n][1] * 10.0**_decimals(n) if n in FORMATS else 1.0
                       for n in FEATURE_NAMES], np.float32)
  return stated, per_unit


STAGE_TEMPLATES = {
    0: ("Wake.", "The subject is awake.", "Stage W (wakefulness).", "Scored as wake."),
    1: ("Stage N1 sleep.", "Light sleep, stage N1.", "Scored as N1.", "The epoch is N1 sleep."),
    2: ("Stage N2 sleep.", "Stage N2, light sleep.", "Scored as N2.", "The epoch is N2 sleep."),
    3: ("Stage N3 sleep.", "Deep sleep, stage N3.", "Scored as N3 (slow-wave sleep).",
        "The epoch is N3 sleep."),
    4: ("REM sleep.", "Stage REM.", "Scored as REM sleep.", "The epoch is REM sleep."),
}
EVENT_WORDS = {"apnea": ("apnea", "apneas"), "hypopnea": ("hypopnea", "hypopneas"),
               "desaturation": ("oxygen desaturation", "oxygen desaturations"),
               "arousal": ("arousal", "arousals"),
               "limb_movement": ("limb movement", "limb movements")}
DERIVATION_LABELS = {"c4_m1": "C4-M1", "c3_m2": "C3-M2"}
POSITION_TEMPLATES = {
    "right": ("Body position: right side.", "Lying on the right side.", "Position right lateral."),
    "supine": ("Body position: supine.", "Lying on the back.", "Position supine."),
    "left": ("Body position: left side.", "Lying on the left side.", "Position left lateral."),
    "prone": ("Body position: prone.", "Lying face down.", "Position prone."),
}


@dataclasses.dataclass
class Caption:
  text: str
  # (feature or summary key, scale, printed string) for each number in `text`, in order
  numbers: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
  statements: list[str] = dataclasses.field(default_factory=list)  # the sentences, in order


def _decimals(name: str) -> int:
  return int(FORMATS[name][0][2])  # "%.1f" -> 1


def _unpack(spec) -> tuple[str, float, float]:
  """A statement's value spec (feature, value[, scale]) -> (feature, value, scale)."""
  return spec[0], spec[1], spec[2] if len(spec) > 2 else FORMATS[spec[0]][1]


def _fmt(name: str, value: float, scale: float | None = None) -> str:
  fmt, default_scale = FORMATS[name]
  s = fmt % (value * (default_scale if scale is None else scale) + 0.0)
  return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0"


class _Writer:
  """Collects statements for one caption, choosing templates with one RNG."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.cap = Caption("")

  def say(self, templates, values=None, words=None):
    """templates: str.format strings; values: field -> (feature, value[, scale]); words: field -> text."""
    values, words = values or {}, words or {}
    template = templates[int(self.rng.integers(len(templates)))]
    printed = {}
    for field, spec in values.items():
      name, value, scale = _unpack(spec)
      printed[field] = (name, scale, _fmt(name, value, scale))
    order = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    text = template.format(**{k: v[2] for k, v in printed.items()}, **words)
    self.cap.numbers += [printed[f] for f in order if f in printed]
    self.cap.statements.append(text)

  def done(self) -> Caption:
    self.cap.text = " ".join(self.cap.statements)
    return self.cap


def _ok(*values) -> bool:
  return all(v is not None and math.isfinite(v) for v in values)


def _plural(n: float, words: tuple[str, str]) -> str:
  return words[0] if round(n) == 1 else words[1]


# --------------------------------------------------------------------------------- epoch groups
def _stage_event(w: _Writer, f):
  st = f[INDEX["stage"]]
  counts = [f[INDEX[f"{k}_count"]] for k in EVENTS]
  if _ok(st):
    templates = STAGE_TEMPLATES[int(st)]
    if all(_ok(c) and c == 0 for c in counts) and w.rng.random() < 0.5:
      templates = tuple(t[:-1] + ", no scored events." for t in templates)
    w.say(templates)
  for kind in EVENTS:
    n, on, off = (f[INDEX[f"{kind}_{s}"]] for s in ("count", "onset_s", "offset_s"))
    if not _ok(n) or n <= 0 or not _ok(on, off):
      continue
    one, many = EVENT_WORDS[kind]
    first = "%.0f" % on == "0"
    last = "%.0f" % off == "30"
    vals = {"n": (f"{kind}_count", n), "on": (f"{kind}_onset_s", on),
            "off": (f"{kind}_offset_s", off)}
    words = {"one": one, "many": many, "One": one[0].upper() + one[1:]}
    if n == 1:
      if first and last:
        w.say(("{One} throughout the epoch.", "{One} lasting the whole epoch."), {}, words)
      elif first:
        w.say(("{One} continuing from the previous epoch until {off} s.",
               "{One} already in progress, ending at {off} s."), {"off": vals["off"]}, words)
      elif last:
        w.say(("{One} starting at {on} s and continuing past the epoch.",
               "{One} from {on} s to the end of the epoch."), {"on": vals["on"]}, words)
      else:
        w.say(("{One} from {on} s to {off} s.", "{One} between {on} and {off} s.",
               "{One} starting at {on} s, ending at {off} s."),
              {"on": vals["on"], "off": vals["off"]}, words)
    else:
      w.say(("{n} {many}, the first starting at {on} s, the last ending at {off} s.",
             "{n} {many} between {on} and {off} s.",
             "{n} {many} from {on} s to {off} s."), vals, words)


def _brain(w: _Writer, f):
  for d in DERIVATIONS:
    bands = {b: f[INDEX[f"eeg_{d}_{b}"]] for b in ("delta", "theta", "alpha", "sigma", "beta")}
    if not _ok(*bands.values()):
      continue
    vals = {b: (f"eeg_{d}_{b}", v) for b, v in bands.items()}
    dom = max(bands, key=bands.get)
    words = {"d": DERIVATION_LABELS[d], "dom": dom}
    w.say(("EEG {d}: delta {delta} %, theta {theta} %, alpha {alpha} %, sigma {sigma} %, "
           "beta {beta} %, dominated by {dom}.",
           "In {d}, relative power is {delta} % delta, {theta} % theta, {alpha} % alpha, "
           "{sigma} % sigma and {beta} % beta.",
           "{d} spectrum is {dom}-dominant: delta {delta} %, theta {theta} %, alpha {alpha} %, "
           "sigma {sigma} %, beta {beta} %."), vals, words)
    sp, sw = f[INDEX[f"eeg_{d}_spindles"]], f[INDEX[f"eeg_{d}_slow_waves"]]
    if _ok(sp, sw):
      w.say(("{sp} {spw} and {sw} {sww}.", "The EEG shows {sp} {spw} and {sw} {sww}.",
             "Detected {sp} {spw} and {sw} {sww} in {d}."),
            {"sp": (f"eeg_{d}_spindles", sp), "sw": (f"eeg_{d}_slow_waves", sw)},
            {"spw": _plural(sp, ("sleep spindle", "sleep spindles")),
             "sww": _plural(sw, ("slow wave", "slow waves")), "d": DERIVATION_LABELS[d]})
    break  # one derivation: the first usable one
  slow, rapid, rems = (f[INDEX[k]] for k in ("eog_slow_power", "eog_rapid_power", "eog_rems"))
  if _ok(slow, rapid, rems):
    w.say(("EOG: slow eye-movement power {slow} uV^2, rapid {rapid} uV^2, {rems} {remw}.",
           "Eye channels show {rems} {remw}; slow eye-movement power {slow} uV^2 and rapid "
           "eye-movement power {rapid} uV^2.",
           "The EOG has {rems} {remw} (slow band {slow} uV^2, rapid band {rapid} uV^2)."),
          {"slow": ("eog_slow_power", slow), "rapid": ("eog_rapid_power", rapid),
           "rems": ("eog_rems", rems)},
          {"remw": _plural(rems, ("rapid eye movement", "rapid eye movements"))})


def _cardiac(w: _Writer, f):
  mean, lo, hi, trend = (f[INDEX[k]] for k in ("hr_mean", "hr_min", "hr_max", "hr_trend"))
  if _ok(mean, lo, hi):
    vals = {"mean": ("hr_mean", mean), "lo": ("hr_min", lo), "hi": ("hr_max", hi)}
    w.say(("Heart rate {mean} bpm on average, ranging from {lo} to {hi} bpm.",
           "Mean heart rate {mean} bpm (minimum {lo}, maximum {hi} bpm).",
           "The heart beats at {mean} bpm, between {lo} and {hi} bpm."), vals)
    if _ok(trend):
      if _fmt("hr_trend", abs(trend)) == "0.0":
        w.say(("Heart rate is stable.", "No heart-rate trend.", "Heart rate holds steady."))
      elif trend > 0:
        w.say(("Heart rate rises by {t} bpm/min.", "Heart rate trending up {t} bpm/min.",
               "An upward heart-rate trend of {t} bpm/min."), {"t": ("hr_trend", trend, 1.0)})
      else:
        w.say(("Heart rate falls by {t} bpm/min.", "Heart rate trending down {t} bpm/min.",
               "A downward heart-rate trend of {t} bpm/min."), {"t": ("hr_trend", trend, -1.0)})
  rmssd = f[INDEX["hr_rmssd"]]
  if _ok(rmssd):
    w.say(("RMSSD {r} ms.", "Heart rate variability (RMSSD) {r} ms.",
           "Beat-to-beat heart variability RMSSD is {r} ms."), {"r": ("hr_rmssd", rmssd)})


def _respiratory(w: _Writer, f):
  ra, re_ = f[INDEX["airflow_rate"]], f[INDEX["effort_rate"]]
  if _ok(ra) and _ok(re_):
    w.say(("Breathing rate {a} breaths/min from airflow and {e} breaths/min from effort.",
           "Respiratory rate is {a} /min (airflow) and {e} /min (effort belts).",
           "Breathing at {a} breaths per minute by airflow, {e} by effort."),
          {"a": ("airflow_rate", ra), "e": ("effort_rate", re_)})
  elif _ok(ra) or _ok(re_):
    name, v, src = ("airflow_rate", ra, "airflow") if _ok(ra) else ("effort_rate", re_, "effort")
    w.say(("Breathing rate {r} breaths/min from {src}.", "Respiratory rate is {r} /min ({src}).",
           "Breathing at {r} breaths per minute by {src}."), {"r": (name, v)}, {"src": src})
  cv_name = "airflow_ibi_cv" if _ok(f[INDEX["airflow_ibi_cv"]]) else "effort_ibi_cv"
  cv = f[INDEX[cv_name]]
  if _ok(cv):
    w.say(("Breath-interval variability {cv} %.", "Breath-to-breath intervals vary by {cv} %.",
           "Breathing regularity: interval variation {cv} %."), {"cv": (cv_name, cv)})
  mean, lo, n = (f[INDEX[k]] for k in ("spo2_mean", "spo2_min", "spo2_desats"))
  if _ok(mean, lo, n):
    vals = {"m": ("spo2_mean", mean), "lo": ("spo2_min", lo), "n": ("spo2_desats", n)}
    words = {"dw": _plural(n, ("desaturation", "desaturations"))}
    w.say(("SpO2 averages {m} % with a minimum of {lo} % and {n} {dw}.",
           "Oxygen saturation {m} % (lowest {lo} %), {n} {dw}.",
           "Mean SpO2 {m} %, nadir {lo} %, {n} {dw}."), vals, words)
  fi = f[INDEX["flow_flatness"]]
  if _ok(fi):
    w.say(("Inspiratory flow flattening index {fi}.", "Nasal pressure flattening index {fi}.",
           "Inspiratory flow shape index {fi} (lower is flatter)."), {"fi": ("flow_flatness", fi)})


def _somatic(w: _Writer, f):
  rms, mf, b = (f[INDEX[k]] for k in ("emg_rms", "emg_median_freq", "emg_bursts"))
  if _ok(rms, mf, b):
    w.say(("Chin EMG {rms} uV RMS, median frequency {mf} Hz, {b} {bw}.",
           "Chin muscle tone {rms} uV RMS with {b} {bw} (median frequency {mf} Hz).",
           "Submental EMG: amplitude {rms} uV RMS, {b} {bw}, median frequency {mf} Hz."),
          {"rms": ("emg_rms", rms), "mf": ("emg_median_freq", mf), "b": ("emg_bursts", b)},
          {"bw": _plural(b, ("burst", "bursts"))})
  pos = f[INDEX["position"]]
  if _ok(pos) and 0 <= pos < len(POSITIONS):
    w.say(POSITION_TEMPLATES[POSITIONS[int(pos)]])


_GROUP_FNS = {"stage_event": _stage_event, "brain": _brain, "cardiac": _cardiac,
              "respiratory": _respiratory, "somatic": _somatic}


def render_epoch(row: np.ndarray, epoch_index: int, seed: int) -> dict[str, Caption]:
  """Captions (with number provenance) of one epoch's feature row."""
  rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch_index)])
  row = [float(v) for v in np.asarray(row, np.float64)]
  out = {}
  for g in GROUPS:
    w = _Writer(rng)
    _GROUP_FNS[g](w, row)
    out[g] = w.done()
  return out


class _Slots(_Writer):
  """Records every statement a feature row supports, with all its templates, instead of writing
  one: what `stated_numbers` matches a generated caption against."""

  def __init__(self):
    super().__init__(np.random.default_rng(0))
    self.slots = []  # (templates, {field: (feature, true value x scale, decimals)}, words)

  def say(self, templates, values=None, words=None):
    fields = {}
    for field, spec in (values or {}).items():
      name, value, scale = _unpack(spec)
      fields[field] = (name, value * scale, _decimals(name))
    self.slots.append((templates, fields, dict(words or {})))


def _slots(row: np.ndarray, group: str) -> list:
  w = _Slots()
  _GROUP_FNS[group](w, [float(v) for v in np.asarray(row, np.float64)])
  return w.slots


_NUM = r"(-?\d+(?:\.\d+)?)"
# word fields that depend on the stated number or on the band values (plural, dominant band): any
# word may stand there; the others (event kind, derivation, source) name what the number is about
_FREE_WORDS = {"spw": r"[a-z ]+?", "sww": r"[a-z ]+?", "remw": r"[a-z ]+?", "bw": r"[a-z]+",
               "dw": r"[a-z]+", "dom": r"[a-z]+"}


def _pattern(template: str, fields: dict, words: dict):
  """Regex of one template: numbers captured in field order, words as the row says them."""
  out, order = [], []
  for literal, field, _, _ in string.Formatter().parse(template):
    out.append(re.escape(literal))
    if field is None:
      continue
    if field in fields:
      out.append(_NUM)
      order.append(field)
    else:
      out.append(_FREE_WORDS.get(field) or re.escape(words[field]))
  return re.compile("".join(out), re.IGNORECASE), order


def stated_numbers(text: str, row: np.ndarray, group: str) -> list[tuple[str, float, float, int]]:
  """The numbers a (generated) caption of `group` states about quantities the epoch's feature row
  has, each as (feature, stated, true value at the caption's scale, decimals printed): every
  statement the row supports is matched in `text` in any of its paraphrases. A number in a
  statement the row does not support (an event the epoch lacks, a trend of the wrong sign) is not
  returned."""
  out = []
  for templates, fields, words in _slots(row, group):
    if not fields:
      continue
    for t in templates:
      pattern, order = _pattern(t, fields, words)
      hit = pattern.search(text)
      if hit:
        out += [(fields[f][0], float(x), fields[f][1], fields[f][2])
                for f, x in zip(order, hit.groups())]
        break
  return out


def content(row: np.ndarray, group: str) -> str:
  """What a caption of `group` says about the epoch, whatever its wording: the caption written with
  the first paraphrase of every statement. Two captions of one group say the same thing exactly
  when their epochs' contents are equal (the seeded choice of paraphrase is not the signal's)."""
  return " ".join(t[0].format(**{k: _fmt(n, v, 1.0) for k, (n, v, _) in fields.items()}, **words)
                  for t, fields, words in _slots(row, group))


def epoch_captions(features: np.ndarray, seed: int) -> list[dict[str, str]]:
  """One dict per epoch: group -> caption ("" when there is nothing to say)."""
  return [{g: c.text for g, c in render_epoch(row, i, seed).items()}
          for i, row in enumerate(np.asarray(features))]


def render_night(summary: dict, seed: int) -> Caption:
  """The night-level caption with number provenance (keys of `features.night_summary`)."""
  rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2**31 - 1])
  w = _Writer(rng)
  s = {k: float(v) if v is not None else float("nan") for k, v in summary.items()}
  g = s.get
  if _ok(g("tst_min"), g("tib_min"), g("efficiency_pct")):
    w.say(("Total sleep time {tst} min of {tib} min in bed, sleep efficiency {eff} %.",
           "The subject slept {tst} min out of {tib} min ({eff} % efficiency).",
           "Sleep efficiency {eff} %: {tst} min asleep in {tib} min recorded."),
          {"tst": ("tst_min", g("tst_min")), "tib": ("tib_min", g("tib_min")),
           "eff": ("efficiency_pct", g("efficiency_pct"))})
  if _ok(g("sleep_latency_min"), g("waso_min")):
    w.say(("Sleep latency {sl} min, wake after sleep onset {waso} min.",
           "Fell asleep after {sl} min; {waso} min awake after sleep onset.",
           "Sleep onset latency {sl} min and WASO {waso} min."),
          {"sl": ("sleep_latency_min", g("sleep_latency_min")),
           "waso": ("waso_min", g("waso_min"))})
  if _ok(g("n1_pct"), g("n2_pct"), g("n3_pct"), g("rem_pct")):
    w.say(("Stage N1 {n1} %, N2 {n2} %, N3 {n3} % and REM {rem} % of sleep.",
           "Sleep consisted of {n1} % N1, {n2} % N2, {n3} % N3 and {rem} % REM.",
           "Stage distribution: N1 {n1} %, N2 {n2} %, N3 {n3} %, REM {rem} %."),
          {k: (f"{k}_pct", g(f"{k}_pct")) for k in ("n1", "n2", "n3", "rem")})
  if _ok(g("ahi")) and _ok(g("odi")):
    w.say(("AHI {ahi} events/h and ODI {odi} events/h.",
           "Apnea-hypopnea index {ahi} /h, oxygen desaturation index {odi} /h.",
           "Respiratory indices: AHI {ahi} per hour, ODI {odi} per hour."),
          {"ahi": ("ahi", g("ahi")), "odi": ("odi", g("odi"))})
  elif _ok(g("ahi")):
    w.say(("AHI {ahi} events/h.", "Apnea-hypopnea index {ahi} /h."), {"ahi": ("ahi", g("ahi"))})
  elif _ok(g("odi")):
    w.say(("ODI {odi} events/h.", "Oxygen desaturation index {odi} /h."),
          {"odi": ("odi", g("odi"))})
  return w.done()


def night_caption(summary: dict, seed: int) -> str:
  """Night-level summary caption: total sleep time, efficiency, stage percentages, AHI, ODI."""
  return render_night(summary, seed).text
