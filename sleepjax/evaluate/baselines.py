"""External baseline: YASA's automatic staging on the test split's EEG (an optional dependency,
`pip install yasa mne` or the `test` extra)."""

import collections
import warnings

import grain
import numpy as np

from sleepjax import records
from sleepjax.data.manifest import shard_paths
from sleepjax.evaluate import metrics
from sleepjax.modalities import STAGES


def _nights(manifest: dict, split: str, modalities: tuple[str, ...]):
  """{recording_id: (stages [E], {modality: physical units [C, samples]})} of whole prepared nights
  (segments joined in order, the normalisation undone; masked epochs stay zero)."""
  parts = collections.defaultdict(list)
  for blob in grain.sources.ArrayRecordDataSource(shard_paths(manifest, split)):
    arrays, meta = records.decode(blob)
    parts[meta["recording_id"]].append((meta["first_epoch"], arrays))
  out = {}
  for rid, segs in sorted(parts.items()):
    segs.sort(key=lambda s: s[0])
    stages = np.concatenate([a["stage"] for _, a in segs]).astype(np.int64)
    sig = {}
    for m in modalities:
      x = np.concatenate([a[f"sig/{m}"] for _, a in segs]).astype(np.float32)  # [E, C, S]
      norm = manifest["recordings"][rid]["normalisation"][m]
      scale = np.asarray(norm["scale"], np.float32)[None, :, None]
      center = np.asarray(norm["center"], np.float32)[None, :, None]
      mask = np.concatenate([a[f"mask/{m}"] for _, a in segs])[..., None]
      sig[m] = np.where(mask, x * scale + center, 0.0).transpose(1, 0, 2).reshape(x.shape[1], -1)
    out[rid] = (stages, sig)
  return out


def yasa(ctx) -> dict:
  """YASA SleepStaging (EEG C4-M1, EOG E1, chin EMG when prepared; age/sex from the metadata) on
  every test night: an external reference that uses no labels from this cohort."""
  try:
    import mne  # pylint: disable=g-import-not-at-top
    import yasa as yasa_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"skipped": "yasa/mne not installed (pip install yasa mne, or the `test` extra)"}
  if "eeg" not in ctx.shown():
    return {"skipped": "no EEG in the modalities evaluated"}
  use = tuple(m for m in ("eeg", "eog", "emg") if m in ctx.shown())
  rate = ctx.manifest["modalities"]["eeg"]["rate"]
  y_true, y_pred, nights = [], [], 0
  for rid, (stages, sig) in _nights(ctx.manifest, ctx.split("test"), use).items():
    names = {"eeg": "EEG", "eog": "EOG", "emg": "EMG"}
    data = np.stack([sig[m][0] for m in use]) * 1e-6  # volts for MNE
    info = mne.create_info([names[m] for m in use], rate, ["eeg"] * len(use), verbose="ERROR")
    raw = mne.io.RawArray(data, info, verbose="ERROR")
    staging = yasa_lib.SleepStaging(raw, eeg_name="EEG", eog_name="EOG" if "eog" in use else None,
                                    emg_name="EMG" if "emg" in use else None)
    with warnings.catch_warnings():  # yasa's pickled classifier predates the installed sklearn
      warnings.simplefilter("ignore")
      pred = np.asarray(staging.predict().as_int().values, np.int64)
    n = min(len(pred), len(stages))
    y_true.append(stages[:n])
    y_pred.append(pred[:n])
    nights += 1
  y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
  return {**metrics.staging(y_true, y_pred, STAGES), "nights": nights, "channels": list(use)}


TASKS = {"yasa": yasa}
