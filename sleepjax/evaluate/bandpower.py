"""The classic baseline of the self-supervised benchmark: per-epoch EEG band powers (the features
hand-crafted stagers such as YASA start from), as an embedding table the probe tasks read like an
encoder's. The `bandpower` eval task runs the `few_shot` and `site` probes on it.

Features per EEG channel, from the periodogram of each 30-s epoch of the stored (per-night
normalised) signal the encoders also see: log power in the delta, theta, alpha, sigma and beta
bands, the same powers relative to their sum, and the log total. Masked channels are zero.
"""

import numpy as np

from sleepjax.data import pipeline
from sleepjax.evaluate import tasks as tasks_lib
from sleepjax.evaluate.embed import LABELS

BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 15.0),
         "beta": (15.0, 30.0)}


def features(x_NxCxS: np.ndarray, rate: float) -> np.ndarray:
  """[N, C * (2 * bands + 1)] band-power features of N epochs of C channels."""
  power = np.abs(np.fft.rfft(x_NxCxS.astype(np.float32), axis=-1)) ** 2
  freq = np.fft.rfftfreq(x_NxCxS.shape[-1], 1.0 / rate)
  band_NxCxK = np.stack([power[..., (freq >= lo) & (freq < hi)].sum(-1)
                         for lo, hi in BANDS.values()], -1) + 1e-6
  total_NxC = band_NxCxK.sum(-1)
  out = np.concatenate([np.log(band_NxCxK), band_NxCxK / total_NxC[..., None],
                        np.log(total_NxC)[..., None]], -1)
  return out.reshape(len(x_NxCxS), -1)


def table(manifest: dict, split: str, config, modality: str = "eeg") -> dict | None:
  """Every whole segment of `split`, as `embed.embed_split` returns it (one process): "epoch" holds
  the band-power features [rows, W, F] beside the labels."""
  if not manifest["splits"][split]["records"]:
    return None
  rate = manifest["modalities"][modality]["rate"]
  ds = pipeline.make_dataset(manifest, split, [modality], window=None,
                             local_batch=config.data.global_batch, seed=0, train=False,
                             read_threads=config.data.read_threads,
                             verify=config.data.verify_shards)
  rows = []
  for batch in ds:
    x = batch[f"signals/{modality}"]  # [B, W, C, S]
    x = np.where(batch[f"masks/{modality}"][..., None], x, 0)
    B, W = x.shape[:2]
    feats = features(x.reshape(B * W, *x.shape[2:]), rate).reshape(B, W, -1)
    rows.append({"epoch": feats, **{k: batch[k] for k in LABELS}})
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.lexsort((out["epoch_index"][:, 0], out["recording"]))
  return {k: v[order] for k, v in out.items()}


def baseline(ctx) -> dict:
  """`few_shot` and `site` (same probes, label draws and splits) on band-power features."""
  if "eeg" not in ctx.shown():
    return {"skipped": "no EEG in the modalities evaluated"}
  sub = tasks_lib.Context(ctx.config, ctx.manifest, ctx.modalities, ["bandpower"],
                          lambda name, split, subset: table(ctx.manifest, split, ctx.config))
  return {"few_shot": tasks_lib.few_shot(sub), "site": tasks_lib.site(sub)}


TASKS = {"bandpower": baseline}
