"""Channel harmonisation: EDF labels -> canonical modality channels, canonical units and rates."""

import dataclasses
import json
import math
import pathlib

import numpy as np
from scipy import signal as sps

from data_prep.edf import Recording
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS

MAPS_DIR = pathlib.Path(__file__).parent / "channel_maps"
# Physical-unit conversions into each modality's canonical unit.
_UNIT_SCALE = {("uv", "uV"): 1.0, ("mv", "uV"): 1e3, ("v", "uV"): 1e6,
               ("mv", "mV"): 1.0, ("uv", "mV"): 1e-3, ("v", "mV"): 1e3}
# Modalities whose absolute level carries meaning are scaled by fixed constants, not per recording.
FIXED_SCALING = {"spo2": (95.0, 5.0), "heart_rate": (65.0, 15.0)}
CLIP = 20.0  # normalised values beyond +-CLIP are clipped (also keeps float16 finite)


def _norm_label(label: str) -> str:
  return "".join(label.lower().split())


def load_channel_map(name: str = "generic") -> dict[str, dict[str, str]]:
  """Returns {normalised EDF label: (modality, channel)} from channel_maps/<name>.json."""
  table = json.loads((MAPS_DIR / f"{name}.json").read_text())
  return {_norm_label(label): (modality, channel)
          for modality, channels in table.items() if not modality.startswith("_")
          for channel, labels in channels.items() for label in labels}


@dataclasses.dataclass
class Harmonised:
  signals: dict[str, np.ndarray]  # modality -> float32 [C, n_epochs * rate * 30], normalised
  present: dict[str, np.ndarray]  # modality -> bool [C]
  stats: dict[str, dict[str, list[float]]]  # modality -> {"center": [C], "scale": [C]}
  unmatched: list[str]  # EDF labels that mapped to nothing


def _resample(x: np.ndarray, rate_in: float, rate_out: int) -> np.ndarray:
  if rate_in == rate_out:
    return x
  if rate_in > rate_out and float(rate_in).is_integer():
    g = math.gcd(int(rate_in), rate_out)
    # Anti-aliased polyphase decimation; line padding avoids ringing at the record's edges.
    return sps.resample_poly(x, rate_out // g, int(rate_in) // g, padtype="line")
  # Upsampling (or a non-integer rate): nothing to alias, and linear interpolation keeps slow
  # signals such as 1-Hz SpO2 exact at their samples, with no filter ripple.
  t_out = np.arange(int(round(len(x) * rate_out / rate_in))) / rate_out
  return np.interp(t_out, np.arange(len(x)) / rate_in, x)


def _robust_stats(x: np.ndarray) -> tuple[float, float]:
  q25, q50, q75 = np.percentile(x, [25, 50, 75])
  scale = (q75 - q25) / 1.349  # IQR of a unit normal
  return float(q50), float(scale) if scale > 1e-6 else 1.0


def harmonise(rec: Recording, n_epochs: int, modalities: list[str],
              channel_map: dict[str, tuple[str, str]]) -> Harmonised:
  """Maps, converts, resamples and normalises `rec`'s signals onto `n_epochs` 30-s epochs."""
  found = {}
  unmatched = []
  for sig in rec.signals:
    key = channel_map.get(_norm_label(sig.label))
    if key is None or key[0] not in modalities:
      unmatched.append(sig.label)
    elif key not in found:  # first matching label wins
      found[key] = sig
  signals, present, stats = {}, {}, {}
  for name in modalities:
    spec = CANONICAL[name]
    n = n_epochs * spec.rate * EPOCH_SECONDS
    out = np.zeros((len(spec.channels), n), np.float32)
    mask = np.zeros(len(spec.channels), bool)
    center, scale = [0.0] * len(spec.channels), [1.0] * len(spec.channels)
    for c, channel in enumerate(spec.channels):
      sig = found.get((name, channel))
      if sig is None:
        continue
      x = sig.data * _UNIT_SCALE.get((sig.unit.lower(), spec.unit), 1.0)
      x = _resample(x, sig.rate, spec.rate)[:n]
      if len(x) < n:  # short signal: zero-fill the tail (masking per epoch comes with QC)
        x = np.pad(x, (0, n - len(x)))
      center[c], scale[c] = FIXED_SCALING.get(name) or _robust_stats(x)
      out[c] = np.clip((x - center[c]) / scale[c], -CLIP, CLIP)
      mask[c] = True
    signals[name], present[name] = out, mask
    stats[name] = {"center": center, "scale": scale}
  return Harmonised(signals, present, stats, unmatched)
