"""`sleepjax prep`: a cohort directory (EDF + NSRR XML + metadata.csv) -> ArrayRecord shards + manifest.

Cohort layout: <raw>/edf/<recording_id>.edf|.bdf, <raw>/annotations/<recording_id>.xml, <raw>/metadata.csv
with columns recording_id, subject_id, site and optional age, sex, bmi, ahi.
"""

import concurrent.futures as cf
import csv
import dataclasses
import pathlib

import numpy as np
from absl import logging

from data_prep import annotations, edf, harmonise, splits, writer
from sleepjax import records
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS


@dataclasses.dataclass
class Converted:
  recording_id: str
  records: list[bytes]
  summary: dict


def _number(value: str) -> float | None:
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def _recording_meta(row: dict) -> dict:
  sex = (row.get("sex") or "").strip().upper()[:1]
  return {
      "recording_id": row["recording_id"], "subject_id": row["subject_id"], "site": row["site"],
      "age": _number(row.get("age")), "sex": {"M": 1, "F": 0}.get(sex),  # None = missing
      "bmi": _number(row.get("bmi")), "ahi": _number(row.get("ahi")),
  }


def convert_recording(edf_path: pathlib.Path, xml_path: pathlib.Path, meta: dict,
                      modalities: list[str], segment_epochs: int, channel_map_name: str) -> Converted:
  """One recording -> encoded segment records (trailing partial segment dropped)."""
  rec = edf.read_edf(edf_path)
  n_epochs = int(rec.duration_s // EPOCH_SECONDS)
  stages, events = annotations.read_nsrr_xml(xml_path, n_epochs)
  raster = annotations.event_raster(events, n_epochs)
  h = harmonise.harmonise(rec, n_epochs, modalities, harmonise.load_channel_map(channel_map_name))
  out = []
  for first in range(0, n_epochs - segment_epochs + 1, segment_epochs):
    sl = slice(first, first + segment_epochs)
    arrays = {"stage": stages[sl], "events": raster[sl]}
    for name in modalities:
      spe = CANONICAL[name].samples_per_epoch
      x = h.signals[name][:, first * spe:(first + segment_epochs) * spe]
      arrays[f"sig/{name}"] = x.reshape(len(x), segment_epochs, spe).transpose(1, 0, 2).astype(np.float16)
      arrays[f"mask/{name}"] = np.broadcast_to(h.present[name], (segment_epochs, len(h.present[name])))
    out.append(records.encode(arrays, {**meta, "first_epoch": first}))
  summary = {
      "subject": meta["subject_id"], "site": meta["site"], "epochs": n_epochs, "segments": len(out),
      "scored_epochs": int((stages >= 0).sum()),
      "present": {m: h.present[m].tolist() for m in modalities},
      "normalisation": h.stats, "unmatched_labels": h.unmatched,
  }
  return Converted(meta["recording_id"], out, summary)


def _find_signal_file(raw: pathlib.Path, recording_id: str) -> pathlib.Path:
  for ext in (".edf", ".EDF", ".bdf", ".BDF"):
    if (p := raw / "edf" / f"{recording_id}{ext}").exists():
      return p
  raise FileNotFoundError(f"{raw / 'edf'}: no EDF/BDF file for recording {recording_id}")


def prepare(raw_dir: str, out_dir: str, config) -> pathlib.Path:
  """Converts the cohort in `raw_dir`; returns the manifest path. `config` is the `prep` section."""
  raw, out = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with open(raw / "metadata.csv", newline="") as f:
    rows = [_recording_meta(r) for r in csv.DictReader(f)]
  modalities = list(config.modalities)
  split_of = splits.assign_splits([r["subject_id"] for r in rows], dict(config.split_fractions),
                                  config.seed)
  converted = {}
  with cf.ProcessPoolExecutor(max_workers=config.workers or None) as pool:
    futures = {
        pool.submit(convert_recording, _find_signal_file(raw, r["recording_id"]),
                    raw / "annotations" / f"{r['recording_id']}.xml", r, modalities,
                    config.segment_epochs, config.channel_map): r["recording_id"] for r in rows}
    for fut in cf.as_completed(futures):
      c = fut.result()
      converted[c.recording_id] = c
      logging.info("prep: %s -> %d segments", c.recording_id, len(c.records))
  manifest = {
      "schema_version": records.SCHEMA_VERSION, "epoch_seconds": EPOCH_SECONDS,
      "segment_epochs": config.segment_epochs,
      "modalities": {m: {"rate": CANONICAL[m].rate, "channels": list(CANONICAL[m].channels),
                         "unit": CANONICAL[m].unit} for m in modalities},
      "sites": sorted({r["site"] for r in rows}),
      "recordings": {}, "splits": {},
  }
  for split in dict(config.split_fractions):
    ids = sorted(r["recording_id"] for r in rows if split_of[r["subject_id"]] == split)
    recs = [b for rid in ids for b in converted[rid].records]
    manifest["splits"][split] = {
        "subjects": sorted({converted[rid].summary["subject"] for rid in ids}),
        "recordings": ids, "records": len(recs),
        "shards": writer.write_shards(out, split, recs, config.shard_records) if recs else [],
    }
    for rid in ids:
      manifest["recordings"][rid] = {**converted[rid].summary, "split": split}
  manifest["availability"] = {
      m: float(np.mean([any(s["present"][m]) for s in manifest["recordings"].values()]))
      for m in modalities}
  return writer.write_manifest(out, manifest)
