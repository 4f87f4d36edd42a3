"""`sleepjax prep`: a cohort directory (EDF + annotations + metadata.csv) -> ArrayRecord shards.

Cohort layout: <raw>/edf/<recording_id>.edf|.bdf, <raw>/annotations/<recording_id>.xml, <raw>/metadata.csv
with columns recording_id, subject_id, site and optional age, sex, bmi, ahi.

Recordings convert in parallel into staging files (see `writer`); a recording that fails is skipped
with its reason in the QC report and never stops the run. Re-running resumes: recordings whose
staging summary exists (and whose source files did not change) are not redone.
"""

import concurrent.futures as cf
import csv
import hashlib
import os
import pathlib

import numpy as np
import tqdm
from absl import logging

from data_prep import annotations, edf, harmonise, splits, writer
from sleepjax import records
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS


def _number(value: str | None) -> float | None:
  try:
    x = float(value)
  except (TypeError, ValueError):
    return None
  return x if np.isfinite(x) else None


def read_metadata(path: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """Rows of metadata.csv as recording metadata, plus QC rows for the lines that are unusable."""
  rows, rejected, seen = [], [], set()
  with open(path, newline="") as f:
    for line, row in enumerate(csv.DictReader(f), start=2):
      rid, sid = (row.get("recording_id") or "").strip(), (row.get("subject_id") or "").strip()
      if not rid or not sid:
        rejected.append({"recording_id": rid or f"{path.name}:{line}", "verdict": "skip",
                         "reasons": [f"{path.name} line {line}: missing recording_id or subject_id"]})
        continue
      if rid in seen:
        rejected.append({"recording_id": f"{rid}@line{line}", "verdict": "skip",
                         "reasons": [f"{path.name} line {line}: recording_id {rid} listed twice"]})
        continue
      seen.add(rid)
      sex = (row.get("sex") or "").strip().upper()[:1]
      rows.append({
          "recording_id": rid, "subject_id": sid, "site": (row.get("site") or "unknown").strip(),
          "age": _number(row.get("age")), "sex": {"M": 1, "F": 0}.get(sex),  # None = missing
          "bmi": _number(row.get("bmi")), "ahi": _number(row.get("ahi"))})
  return rows, rejected


def _find_signal_file(raw: pathlib.Path, recording_id: str) -> pathlib.Path:
  for ext in (".edf", ".EDF", ".bdf", ".BDF"):
    if (p := raw / "edf" / f"{recording_id}{ext}").exists():
      return p
  raise FileNotFoundError(f"{raw / 'edf'}: no EDF/BDF file for recording {recording_id}")


def _source_stamp(raw: pathlib.Path, recording_id: str) -> list[list]:
  """Name, size and mtime of a recording's input files: if they change, it is converted again."""
  paths = [raw / "edf" / f"{recording_id}{ext}" for ext in (".edf", ".EDF", ".bdf", ".BDF")]
  paths.append(raw / "annotations" / f"{recording_id}.xml")
  return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.exists()]


def convert_recording(edf_path: pathlib.Path, annotation_path: pathlib.Path, meta: dict,
                      modalities: list[str], segment_epochs: int,
                      channel_map_name: str) -> tuple[list[bytes], dict]:
  """One recording -> encoded segment records (a trailing partial segment is dropped) + summary."""
  rec = edf.read_edf(edf_path)
  n_epochs = int(rec.duration_s // EPOCH_SECONDS)
  if n_epochs < segment_epochs:
    raise ValueError(f"{edf_path.name}: {rec.duration_s:.0f} s is shorter than one segment "
                     f"({segment_epochs} epochs)")
  stages, events = annotations.read_nsrr_xml(annotation_path, n_epochs)
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
  signal_sha = hashlib.sha256(b"".join(s.data[:4096].tobytes() for s in rec.signals)).hexdigest()
  summary = {
      "subject": meta["subject_id"], "site": meta["site"], "epochs": n_epochs, "segments": len(out),
      "scored_epochs": int((stages >= 0).sum()), "signal_sha": signal_sha,
      "present": {m: h.present[m].tolist() for m in modalities},
      "normalisation": h.stats, "unmatched_labels": h.unmatched,
  }
  return out, summary


def _stage_recording(raw: pathlib.Path, out: pathlib.Path, meta: dict, config) -> dict:
  """Converts one recording into staging files; any failure becomes a `skip` verdict."""
  rid = meta["recording_id"]
  staged = writer.staging_dir(out)
  annotation_path = raw / "annotations" / f"{rid}.xml"
  summary = {"recording_id": rid, "meta": meta, "source": _source_stamp(raw, rid)}
  try:
    edf_path = _find_signal_file(raw, rid)
    recs, info = convert_recording(edf_path, annotation_path, meta, list(config.modalities),
                                   config.segment_epochs, config.channel_map)
    if not any(any(p) for p in info["present"].values()):
      raise ValueError(f"{edf_path.name}: no channel maps onto {list(config.modalities)}")
    writer.write_records(staged / f"{rid}.array_record", recs)
    summary.update(info, verdict="ok", reasons=[])
  except (ValueError, OSError) as e:  # unreadable or unusable input: report, never crash the run
    summary.update(verdict="skip", reasons=[str(e)])
  writer.write_json(staged / f"{rid}.json", summary)  # last: marks the recording as done
  return summary


def _mark_duplicates(summaries: dict[str, dict], order: list[str]):
  """The same night under two ids (identical signals): keep the id listed first in the metadata."""
  first_of = {}
  for rid in order:
    s = summaries[rid]
    if s["verdict"] != "ok":
      continue
    if (orig := first_of.setdefault(s["signal_sha"], rid)) != rid:
      s["verdict"] = "skip"
      s["reasons"] = [f"duplicate of {orig} (identical signals; subject "
                      f"{summaries[orig]['subject']} vs {s['subject']})"]


def write_qc_report(out: pathlib.Path, summaries: dict[str, dict], rejected: list[dict]):
  rows = [{"recording_id": rid, "verdict": s["verdict"], "reasons": s["reasons"],
           "subject": s.get("subject", s.get("meta", {}).get("subject_id")),
           "epochs": s.get("epochs"), "unmatched_labels": s.get("unmatched_labels", []),
           "present": s.get("present", {})} for rid, s in sorted(summaries.items())] + rejected
  writer.write_json(out / "qc.json", rows)
  tmp = out / "qc.csv.tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["recording_id", "subject", "verdict", "epochs", "reasons", "unmatched_labels"])
    for r in rows:
      w.writerow([r["recording_id"], r.get("subject"), r["verdict"], r.get("epochs"),
                  "; ".join(r["reasons"]), " ".join(r.get("unmatched_labels", []))])
  os.replace(tmp, out / "qc.csv")


def prepare(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, config) -> pathlib.Path:
  """Converts the cohort in `raw_dir`; returns the manifest path. `config` is the `prep` section."""
  raw, out = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  metas, rejected = read_metadata(raw / "metadata.csv")
  done = writer.finished(out)
  todo = [m for m in metas if m["recording_id"] not in done
          or done[m["recording_id"]]["source"] != _source_stamp(raw, m["recording_id"])]
  logging.info("prep: %d recordings, %d already done, %d to convert", len(metas),
               len(metas) - len(todo), len(todo))
  summaries = {m["recording_id"]: done[m["recording_id"]] for m in metas
               if m["recording_id"] in done and m not in todo}
  with cf.ProcessPoolExecutor(max_workers=config.workers or None) as pool:
    futures = [pool.submit(_stage_recording, raw, out, m, config) for m in todo]
    for fut in tqdm.tqdm(cf.as_completed(futures), total=len(futures), desc="prep", unit="rec",
                         disable=not todo):
      s = fut.result()
      summaries[s["recording_id"]] = s
  _mark_duplicates(summaries, [m["recording_id"] for m in metas])
  write_qc_report(out, summaries, rejected)

  ok = {rid: s for rid, s in summaries.items() if s["verdict"] == "ok"}
  split_of = splits.assign_splits([s["subject"] for s in ok.values()],
                                  dict(config.split_fractions), config.seed)
  modalities = list(config.modalities)
  manifest = {
      "schema_version": records.SCHEMA_VERSION, "epoch_seconds": EPOCH_SECONDS,
      "segment_epochs": config.segment_epochs,
      "modalities": {m: {"rate": CANONICAL[m].rate, "channels": list(CANONICAL[m].channels),
                         "unit": CANONICAL[m].unit} for m in modalities},
      "sites": sorted({s["site"] for s in ok.values()}),
      "recordings": {}, "splits": {},
      "skipped": {rid: s["reasons"] for rid, s in summaries.items() if s["verdict"] != "ok"},
  }
  for split in dict(config.split_fractions):
    ids = sorted(rid for rid, s in ok.items() if split_of[s["subject"]] == split)
    shards = (writer.write_shards(out, split, ids, config.shard_records, config.compression)
              if ids else [])
    manifest["splits"][split] = {
        "subjects": sorted({ok[rid]["subject"] for rid in ids}), "recordings": ids,
        "records": sum(s["records"] for s in shards), "shards": shards}
    for rid in ids:
      s = ok[rid]
      manifest["recordings"][rid] = {
          "split": split, **{k: s[k] for k in ("subject", "site", "epochs", "segments",
                                               "scored_epochs", "present", "normalisation",
                                               "unmatched_labels")}}
  manifest["availability"] = {
      m: float(np.mean([any(r["present"][m]) for r in manifest["recordings"].values()] or [0.0]))
      for m in modalities}
  path = writer.write_manifest(out, manifest)
  print(f"prep: {len(ok)} recordings converted, {len(summaries) - len(ok) + len(rejected)} skipped "
        f"(QC report: {out / 'qc.csv'})")
  return path
