"""Representation audit: what a linear probe reads from the frozen epoch embedding besides the
stage. Every split's epochs are pooled, a random half (seeded) fits a class-balanced linear probe
per target and the other half scores it by balanced accuracy (chance = 1 / classes):

  stage          the five sleep stages (what the embedding is for)
  subject        who the night belongs to (random half of epochs: every night on both sides)
  site           which site recorded it
  time_of_night  the epoch's position in its night, in `eval.audit_time_bins` equal bins

An objective that aligns modalities through what they share besides physiology (the night's own
offsets, a site's artefact) shows up as subject or site read better than from the random encoder,
stage not better. Run it on several checkpoints (`eval.checkpoint_step`) for the curve over steps.
"""

import numpy as np

from sleepjax.evaluate import metrics, probes
from sleepjax.modalities import STAGES

TARGETS = ("stage", "subject", "site", "time_of_night")


def labels(ctx, table: dict) -> dict:
  """Per-epoch targets [N] of a pooled table (integers, -1 = unlabelled) and their class counts."""
  rows, width = table["stage"].shape
  subject_of = {rid: ctx.manifest["recordings"][rid]["subject"] for rid in ctx.recording_ids}
  names = sorted(set(subject_of.values()))
  subject_R = np.array([names.index(subject_of[rid]) for rid in ctx.recording_ids])
  recording = np.repeat(table["recording"], width)
  index = table["epoch_index"].reshape(-1).astype(np.int64)
  length = np.zeros(len(ctx.recording_ids), np.int64)  # epochs per night seen in the table
  np.maximum.at(length, recording, index + 1)
  bins = ctx.opt("audit_time_bins")
  return {"stage": (table["stage"].reshape(-1).astype(np.int64), len(STAGES)),
          "subject": (subject_R[recording], len(names)),
          "site": (np.repeat(table["site"], width).astype(np.int64), len(ctx.manifest["sites"])),
          "time_of_night": (np.minimum(index * bins // length[recording], bins - 1), bins)}


def pooled(ctx, encoder: str) -> dict:
  """The train, val and test tables of one encoder joined (the audit asks what is decodable, not
  what generalises across subjects)."""
  tables = [t for s in ("train", "val", "test") if (t := ctx.table(encoder, ctx.split(s)))]
  return {k: np.concatenate([t[k] for t in tables]) for k in ("epoch", "stage", "recording",
                                                              "site", "epoch_index")}


def audit(ctx) -> dict:
  """Balanced accuracy of a linear probe per target and encoder (see the module docstring)."""
  out = {"targets": list(TARGETS), "seed": ctx.opt("audit_seed")}
  for enc in ctx.encoders:
    table = pooled(ctx, enc)
    x = table["epoch"].reshape(-1, table["epoch"].shape[-1]).astype(np.float32)
    fit = np.random.default_rng(ctx.opt("audit_seed")).permutation(len(x)) < len(x) // 2
    res = {}
    for target, (y, n_classes) in labels(ctx, table).items():
      probe = probes.fit_linear_probe(x[fit], y[fit], n_classes, steps=ctx.opt("probe_steps"),
                                      lr=ctx.opt("probe_lr"), l2=ctx.opt("probe_l2"))
      present = np.unique(y[~fit & (y >= 0)])
      res[target] = {"balanced_accuracy": metrics.balanced_accuracy(y[~fit], probe(x[~fit]),
                                                                    n_classes),
                     "chance": 1.0 / max(len(present), 1), "classes": int(len(present))}
    out[enc] = res
  return out


TASKS = {"audit": audit}
