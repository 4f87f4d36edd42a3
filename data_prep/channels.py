"""Channel harmonisation: EDF labels -> canonical (modality, channel) signals in canonical units.

Driven by data files, `channel_maps/<cohort>.json` (or a path to any such file). A map is a JSON
object; keys that start with "_" are not modality names:

  "<modality>": {"<channel>": ["EDF label", ...]}
      aliases: labels that *are* this canonical channel, best first.
  "_derive": {"<modality>.<channel>": [{"plus": ["C4", ...], "minus": ["M1", "A1", ...]}, ...]}
      derivations: the channel as plus minus minus (the first present label of each list), for
      recordings that store referential channels. Tried, in order, after the map's aliases.
  "_polarity": {"EDF label": -1}
      the label is recorded with inverted polarity; it is multiplied by -1 (before any derivation).
  "_units": {"EDF label": "uV"}
      the physical dimension to assume for the label, replacing the header's (blank or wrong).
  "_ignore": ["EDF label", ...]
      labels the cohort knows are not canonical (e.g. MESA "EEG2" = Cz-Oz): never mapped through
      the generic fallback. They are still reported in `unmatched`.
  "_min_rate": {"<modality>.<channel>": Hz}
      candidates sampled below this rate are refused (e.g. Sleep-EDF's 1-Hz EMG envelope).
  "_sex_codes": {"1": "male", "2": "female"}
      numeric sex codes of the cohort's metadata.csv (default: NSRR's 1 male, 2 female); the
      words M/F/male/female are always read.
  "_doc", "_source": free text.

Labels match case-insensitively, ignoring whitespace and trailing dots (PhysioNet pads labels with
dots: "C4.."). Per canonical channel the candidates are tried in this order, first present wins:
cohort aliases, cohort derivations, generic aliases, generic derivations. A label the cohort map
aliases (or ignores) is never used by the generic fallback for another channel.

Units: eeg/eog/emg end in uV and ecg in mV (from V, mV, uV, nV; case-insensitive, micro sign or
"u"); spo2 in % and heart_rate in bpm (from bpm, beats/min, /min; Hz is multiplied by 60); other
modalities are arbitrary units and keep their values. An unknown dimension is assumed to be the
canonical unit and noted. Derivation inputs are converted first; a reference sampled at another
rate than the active signal is resampled to the active's rate (polyphase, anti-aliased) and
noted. Output signals keep their source rate (resampling to canonical rates is harmonise's job)
and may share memory with the recording's arrays.
"""

import dataclasses
import fractions
import functools
import json
import os
import pathlib
from collections.abc import Iterable

import numpy as np
from scipy import signal as sps

from data_prep.edf import Recording, Signal
from sleepjax.modalities import CANONICAL

MAPS_DIR = pathlib.Path(__file__).parent / "channel_maps"
_META_KEYS = {"_doc", "_source", "_derive", "_polarity", "_units", "_ignore", "_min_rate",
              "_sex_codes"}
SEX_CODES_NSRR = {"1": 1, "2": 0}  # NSRR (SHHS, MrOS, ...): 1 male, 2 female; 1 = male, 0 = female
_VOLTS = {"v": 1.0, "mv": 1e-3, "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "nv": 1e-9}
_PERCENT = {"%", "percent", "pct", "%sat", "%spo2", "%sao2"}
_PER_MINUTE = {"bpm": 1.0, "beats/min": 1.0, "beat/min": 1.0, "b/min": 1.0, "/min": 1.0,
               "1/min": 1.0, "min-1": 1.0, "hz": 60.0, "1/s": 60.0}
_ACCELERATION = {"g": 1.0, "mg": 1e-3, "m/s^2": 1 / 9.80665, "m/s2": 1 / 9.80665}  # -> g

Key = tuple[str, str]  # (modality, channel)


def normalise_label(label: str) -> str:
  return "".join(label.lower().split()).rstrip(".")


@dataclasses.dataclass
class Resolved:
  signals: dict[Key, Signal]  # canonical unit, polarity fixed, derivations applied
  unmatched: list[str]  # EDF labels that contributed to no canonical channel
  notes: list[str]  # what was done: derivations, conversions, duplicates, refusals


@dataclasses.dataclass(frozen=True)
class ChannelMap:
  name: str
  aliases: dict[Key, tuple[str, ...]]  # normalised labels, best first
  owner: dict[str, Key]  # normalised alias -> channel
  derive: dict[Key, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]]
  polarity: dict[str, float]
  units: dict[str, str]
  ignore: frozenset[str]
  min_rate: dict[Key, float]
  sex_codes: dict[str, int] = dataclasses.field(default_factory=lambda: dict(SEX_CODES_NSRR))


def _key(path, text: str) -> Key:
  modality, _, channel = text.partition(".")
  if modality not in CANONICAL or channel not in CANONICAL[modality].channels:
    raise ValueError(f"{path}: {text!r} is not a canonical modality.channel")
  return modality, channel


def _parse_map(path: pathlib.Path) -> ChannelMap:
  try:
    table = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read channel map ({e})") from e
  aliases, owner = {}, {}
  for modality, channels in table.items():
    if modality.startswith("_"):
      if modality not in _META_KEYS:
        raise ValueError(f"{path}: unknown key {modality!r} (known: {sorted(_META_KEYS)})")
      continue
    for channel, labels in channels.items():
      key = _key(path, f"{modality}.{channel}")
      norm = tuple(dict.fromkeys(normalise_label(label) for label in labels))
      for label in norm:
        if owner.setdefault(label, key) != key:
          raise ValueError(f"{path}: label {label!r} maps to both {owner[label]} and {key}")
      aliases[key] = norm
  derive = {}
  for text, specs in table.get("_derive", {}).items():
    derive[_key(path, text)] = tuple(
        (tuple(normalise_label(x) for x in spec["plus"]),
         tuple(normalise_label(x) for x in spec["minus"])) for spec in specs)
  polarity = {normalise_label(k): float(v) for k, v in table.get("_polarity", {}).items()}
  if any(v not in (1.0, -1.0) for v in polarity.values()):
    raise ValueError(f"{path}: _polarity values must be 1 or -1")
  units = {normalise_label(k): v for k, v in table.get("_units", {}).items()}
  ignore = frozenset(normalise_label(x) for x in table.get("_ignore", []))
  min_rate = {_key(path, k): float(v) for k, v in table.get("_min_rate", {}).items()}
  sex_codes = dict(SEX_CODES_NSRR)
  if "_sex_codes" in table:
    words = {"male": 1, "m": 1, "female": 0, "f": 0}
    try:
      sex_codes = {str(k).strip(): words[str(v).strip().lower()]
                   for k, v in table["_sex_codes"].items()}
    except (AttributeError, KeyError) as e:
      raise ValueError(f"{path}: _sex_codes must map codes to \"male\" or \"female\" ({e})"
                       ) from None
  return ChannelMap(path.stem, aliases, owner, derive, polarity, units, ignore, min_rate,
                    sex_codes)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ChannelMap:
  return _parse_map(pathlib.Path(path))


def load_map(cohort: str | os.PathLike = "generic") -> ChannelMap:
  """The map of a cohort name (channel_maps/<name>.json) or of a JSON file path."""
  path = pathlib.Path(cohort)
  if path.suffix != ".json":
    path = MAPS_DIR / f"{cohort}.json"
    if not path.exists():
      raise ValueError(f"unknown cohort channel map {str(cohort)!r}; known: {cohorts()}")
  return _load(str(path.resolve()))


def cohorts() -> list[str]:
  return sorted(p.stem for p in MAPS_DIR.glob("*.json"))


def to_canonical_unit(data: np.ndarray, unit: str, modality: str) -> tuple[np.ndarray, str | None]:
  """Converts `data` in physical dimension `unit` to CANONICAL[modality].unit; returns a note
  when the dimension was not understood (the data are then assumed to be in the canonical unit)."""
  target = CANONICAL[modality].unit
  u = "".join(unit.split()).lower()
  if target in ("uV", "mV"):
    if u in _VOLTS:
      factor = _VOLTS[u] / _VOLTS[target.lower()]
      return (data * factor if factor != 1 else data), None
    return data, f"unit {unit!r} is not a voltage; assumed {target}"
  if target == "%":
    return data, None if u in _PERCENT else f"unit {unit!r} is not %; assumed %"
  if target == "bpm":
    if u in _PER_MINUTE:
      factor = _PER_MINUTE[u]
      return (data * factor if factor != 1 else data), None
    return data, f"unit {unit!r} is not a rate; assumed bpm"
  if target == "g":
    if u in _ACCELERATION:
      factor = _ACCELERATION[u]
      return (data * factor if factor != 1 else data), None
    return data, f"unit {unit!r} is not an acceleration; assumed g"
  return data, None  # arbitrary units


def _resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
  ratio = fractions.Fraction(rate_out / rate_in).limit_denominator(1000)
  if abs(float(ratio) - rate_out / rate_in) < 1e-9:
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, padtype="line")
  t_out = np.arange(int(round(len(x) * rate_out / rate_in))) / rate_out
  return np.interp(t_out, np.arange(len(x)) / rate_in, x)


@dataclasses.dataclass
class _Plan:
  chosen: dict[Key, tuple]  # ("alias", i, map) or ("derive", i_plus, i_minus, map)
  used: set[int]
  notes: list[str]
  refused: set[int]


def _plan(labels: list[str], rates: list[float], cohort) -> _Plan:
  cmap = load_map(cohort)
  maps = [cmap] if cmap.name == "generic" else [cmap, load_map("generic")]
  where: dict[str, list[int]] = {}
  for i, label in enumerate(labels):
    where.setdefault(normalise_label(label), []).append(i)
  plan = _Plan({}, set(), [], set())

  def usable(norm: str, m: ChannelMap) -> bool:
    return m is cmap or (norm not in cmap.owner and norm not in cmap.ignore)

  for modality, spec in CANONICAL.items():
    for channel in spec.channels:
      key = (modality, channel)
      min_rate = next((m.min_rate[key] for m in maps if key in m.min_rate), 0.0)

      def find(candidates, m, key=key, min_rate=min_rate):
        for norm in candidates:
          for i in where.get(norm, []) if usable(norm, m) else []:
            if rates[i] >= min_rate:
              return i
            if i not in plan.refused:
              plan.refused.add(i)
              plan.notes.append(f"{labels[i]!r} refused for {modality}/{channel}: "
                                f"{rates[i]:g} Hz < {min_rate:g} Hz")
        return None

      for m in maps:
        i = find(m.aliases.get(key, ()), m)
        if i is not None:
          plan.chosen[key] = ("alias", i, m)
          break
        for plus, minus in m.derive.get(key, ()):
          a, b = find(plus, m), find(minus, m)
          if a is not None and b is not None:
            plan.chosen[key] = ("derive", a, b, m)
            break
        if key in plan.chosen:
          break
      if key in plan.chosen:
        plan.used.update(plan.chosen[key][1:-1])
  for i, label in enumerate(labels):
    norm = normalise_label(label)
    owner = cmap.owner.get(norm) or (maps[-1].owner.get(norm) if usable(norm, maps[-1]) else None)
    if i not in plan.used and owner and i not in plan.refused:
      plan.notes.append(f"{label!r} also maps to {owner[0]}/{owner[1]}; another signal is used")
      plan.used.add(i)  # matched something: not reported as unmatched
  return plan


def needed_labels(signals: Iterable[tuple[str, float]], cohort: str = "generic") -> set[str]:
  """The labels `resolve_channels` would read, from (label, rate) pairs of a header."""
  signals = list(signals)
  plan = _plan([s[0] for s in signals], [s[1] for s in signals], cohort)
  return {signals[i][0] for choice in plan.chosen.values() for i in choice[1:-1]}


def resolve_channels(rec: Recording, cohort: str | os.PathLike = "generic") -> Resolved:
  """Maps `rec`'s signals onto canonical (modality, channel)s with the cohort's channel map."""
  labels = [s.label for s in rec.signals]
  plan = _plan(labels, [s.rate for s in rec.signals], cohort)
  cmap = load_map(cohort)
  maps = [cmap] if cmap.name == "generic" else [cmap, load_map("generic")]
  notes = list(plan.notes)

  def prepared(i: int, modality: str, key: Key) -> np.ndarray:
    sig = rec.signals[i]
    norm = normalise_label(sig.label)
    unit = next((m.units[norm] for m in maps if norm in m.units), sig.unit)
    data, note = to_canonical_unit(sig.data, unit, modality)
    if note:
      notes.append(f"{sig.label!r} ({key[0]}/{key[1]}): {note}")
    if next((m.polarity[norm] for m in maps if norm in m.polarity), 1.0) < 0:
      data = -data
      notes.append(f"{sig.label!r} ({key[0]}/{key[1]}): polarity inverted")
    return data

  out = {}
  for key, choice in plan.chosen.items():
    modality = key[0]
    if choice[0] == "alias":
      sig = rec.signals[choice[1]]
      out[key] = Signal(sig.label, sig.rate, CANONICAL[modality].unit,
                        prepared(choice[1], modality, key))
      continue
    a, b = rec.signals[choice[1]], rec.signals[choice[2]]
    x, ref = prepared(choice[1], modality, key), prepared(choice[2], modality, key)
    if a.rate != b.rate:
      ref = _resample(ref, b.rate, a.rate)
      notes.append(f"{b.label!r} resampled {b.rate:g} -> {a.rate:g} Hz to derive "
                   f"{key[0]}/{key[1]}")
    n = min(len(x), len(ref))
    if abs(len(x) - len(ref)) > 1:
      notes.append(f"{key[0]}/{key[1]}: {a.label!r} and {b.label!r} differ in length "
                   f"({len(x)} vs {len(ref)} samples); cut to {n}")
    out[key] = Signal(f"{a.label} - {b.label}", a.rate, CANONICAL[modality].unit, x[:n] - ref[:n])
    notes.append(f"{key[0]}/{key[1]} derived as {a.label!r} - {b.label!r} ({choice[3].name} map)")
  unmatched = [label for i, label in enumerate(labels) if i not in plan.used]
  return Resolved(out, unmatched, notes)
