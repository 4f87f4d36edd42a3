"""`sleepjax prep`: a cohort directory (EDF + annotations + metadata.csv) -> ArrayRecord shards.

Cohort layout: <raw>/edf/<recording_id>.edf|.bdf, <raw>/annotations/<recording_id>.xml|.csv|.edf
(NSRR XML, CSV, EDF+ annotations or a Sleep-EDF hypnogram), <raw>/metadata.csv with columns
recording_id, subject_id, site and optional age, sex, bmi, ahi.

Per recording: read -> map channels (cohort channel map) -> QC, filter, resample, normalise ->
per-epoch features and captions -> segments of E epochs.

Recordings convert in parallel into staging files (see `writer`); a recording that fails is skipped
with its reason in the QC report and never stops the run. Re-running resumes: recordings whose
staging summary exists (and whose source files did not change) are not redone.
"""

import concurrent.futures as cf
import csv
import hashlib
import json
import multiprocessing
import os
import pathlib
import zlib

import numpy as np
import tqdm
from absl import logging

from data_prep import (annotations, captions, channels, cluster, edf, features, harmonise, qc,
                       splits, writer)
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
        rejected.append(qc.error_row(rid or f"{path.name}:{line}",
                                     f"{path.name} line {line}: missing recording_id or subject_id"))
        continue
      if rid in seen:
        rejected.append(qc.error_row(f"{rid}@line{line}",
                                     f"{path.name} line {line}: recording_id {rid} listed twice"))
        continue
      seen.add(rid)
      sex = (row.get("sex") or "").strip().upper()[:1]
      rows.append({
          "recording_id": rid, "subject_id": sid, "site": (row.get("site") or "unknown").strip(),
          "age": _number(row.get("age")), "sex": {"M": 1, "F": 0}.get(sex),  # None = missing
          "bmi": _number(row.get("bmi")), "ahi": _number(row.get("ahi"))})
  return rows, rejected


def _find(folder: pathlib.Path, recording_id: str, extensions: tuple[str, ...]) -> pathlib.Path:
  for ext in extensions:
    for variant in (ext, ext.upper()):
      if (p := folder / f"{recording_id}{variant}").exists():
        return p
  raise FileNotFoundError(f"{folder}: no {'/'.join(extensions)} file for recording {recording_id}")


SIGNAL_EXTENSIONS = (".edf", ".bdf", ".rec")
ANNOTATION_EXTENSIONS = (".xml", ".csv", ".tsv", ".txt", ".edf")
POSITION_LABELS = ("position", "pos", "bodyposition", "body")  # SHHS coding 0..3, 1 Hz or more


def _source_stamp(raw: pathlib.Path, recording_id: str) -> list[list]:
  """Name, size and mtime of a recording's input files: if they change, it is converted again."""
  paths = [raw / folder / f"{recording_id}{v}" for folder, exts in (
      ("edf", SIGNAL_EXTENSIONS), ("annotations", ANNOTATION_EXTENSIONS))
           for e in exts for v in (e, e.upper())]
  return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.exists()]


def _position(rec: edf.Recording, n_epochs: int) -> np.ndarray | None:
  """The body-position channel as integer codes at 1 Hz, if the recording has one."""
  for sig in rec.signals:
    if channels.normalise_label(sig.label) in POSITION_LABELS and sig.rate >= 1:
      codes = np.round(sig.data[::int(round(sig.rate))][:n_epochs * EPOCH_SECONDS])
      return codes if np.isfinite(codes).all() else None
  return None


def convert_recording(raw: pathlib.Path, meta: dict, config) -> tuple[list[bytes], dict]:
  """One recording -> (encoded segment records, summary with its QC row).

  A trailing partial segment is dropped. A `skip` verdict yields no records.
  """
  rid = meta["recording_id"]
  qc_config = qc.QCConfig(min_duration_s=config.min_duration_s)
  modalities = list(config.modalities)
  rec = edf.read_edf(_find(raw / "edf", rid, SIGNAL_EXTENSIONS), decoder="numpy")
  n_signal = int(rec.duration_s // EPOCH_SECONDS)
  issues = []
  stages, events = annotations.read_annotations(
      _find(raw / "annotations", rid, ANNOTATION_EXTENSIONS), n_signal,
      recording_start=rec.start, issues=issues)
  scored = np.flatnonzero(stages >= 0)
  lengths = qc.check_lengths(n_signal, int(scored[-1]) + 1 if len(scored) else n_signal, qc_config)
  n_epochs = lengths.n_epochs
  stages = stages[:n_epochs]
  resolved = channels.resolve_channels(rec, config.channel_map)
  h = harmonise.harmonise(resolved, n_epochs, modalities, config=qc_config)
  verdict, reasons = qc.recording_verdict(h.qc, duration_s=rec.duration_s, stages=stages,
                                          lengths=lengths, config=qc_config)
  if verdict == "ok" and n_epochs < config.segment_epochs:
    verdict, reasons = "skip", [f"{n_epochs} epochs: shorter than one segment "
                                f"({config.segment_epochs})"]
  notes = resolved.notes + issues + ([lengths.note] if lengths.note else [])
  row = qc.report_row(rid, h.qc, verdict, reasons, n_epochs, notes=notes,
                      epoch_mask=h.epoch_mask, line_freq=h.line_freq, unmatched=h.unmatched)
  summary = {"verdict": verdict, "reasons": reasons, "qc": row, "subject": meta["subject_id"],
             "site": meta["site"], "epochs": n_epochs, "scored_epochs": int((stages >= 0).sum()),
             "present": {m: h.present[m].tolist() for m in modalities},
             "normalisation": h.stats, "unmatched_labels": h.unmatched,
             "signal_sha": hashlib.sha256(b"".join(
                 s.data[:4096].tobytes() for s in rec.signals)).hexdigest()}
  if verdict != "ok":
    return [], summary

  # Features come from physical units: undo the normalisation (masked samples are zero and their
  # epochs masked, so they never reach a feature).
  physical = {m: h.signals[m] * np.asarray(h.stats[m]["scale"], np.float32)[:, None]
              + np.asarray(h.stats[m]["center"], np.float32)[:, None] for m in modalities}
  feats_ExF = features.epoch_features(physical, h.epoch_mask, stages, events,
                                      position=_position(rec, n_epochs), r_peaks=h.r_peaks)
  seed = zlib.crc32(rid.encode()) ^ config.seed  # wording varies across nights, fixed per night
  epoch_caps = captions.epoch_captions(feats_ExF, seed)
  night = features.night_summary(feats_ExF, stages, events)
  summary.update(night_summary=night, night_caption=captions.night_caption(night, seed))
  raster = annotations.event_raster(events, n_epochs)
  e = config.segment_epochs
  out = []
  for first in range(0, n_epochs - e + 1, e):
    sl = slice(first, first + e)
    arrays = {"stage": stages[sl], "events": raster[sl], "features": feats_ExF[sl]}
    for name in modalities:
      spe = CANONICAL[name].samples_per_epoch
      x = h.signals[name][:, first * spe:(first + e) * spe]
      arrays[f"sig/{name}"] = x.reshape(len(x), e, spe).transpose(1, 0, 2).astype(np.float16)
      arrays[f"mask/{name}"] = h.epoch_mask[name][sl]
    caps = {g: [epoch_caps[i][g] for i in range(first, first + e)] for g in captions.GROUPS}
    arrays["captions"] = records.text_array(caps)
    out.append(records.encode(arrays, {**meta, "first_epoch": first}))
  summary["segments"] = len(out)
  return out, summary


def _stage_recording(raw: pathlib.Path, out: pathlib.Path, meta: dict, config) -> dict:
  """Converts one recording into staging files; any failure becomes a `skip` verdict."""
  rid = meta["recording_id"]
  summary = {"recording_id": rid, "meta": meta, "source": _source_stamp(raw, rid)}
  try:
    recs, info = convert_recording(raw, meta, config)
    if recs:
      writer.write_records(writer.staging_dir(out) / f"{rid}.array_record", recs)
    summary.update(info)
  except (ValueError, OSError) as e:  # unreadable or unusable input: report, never crash the run
    summary.update(verdict="skip", reasons=[str(e)], qc=qc.error_row(rid, str(e)),
                   subject=meta["subject_id"])
  writer.write_json(writer.staging_dir(out) / f"{rid}.json", summary)  # last: marks it done
  return summary


def _mark_duplicates(summaries: dict[str, dict], order: list[str]):
  """The same night under two ids (identical signals): keep the id listed first in the metadata."""
  first_of = {}
  for rid in order:
    s = summaries[rid]
    if s["verdict"] != "ok":
      continue
    if (orig := first_of.setdefault(s["signal_sha"], rid)) != rid:
      reason = (f"duplicate of {orig} (identical signals; subject "
                f"{summaries[orig]['subject']} vs {s['subject']})")
      s["verdict"], s["reasons"] = "skip", [reason]
      s["qc"] = {**s["qc"], "verdict": "skip", "reasons": [reason]}


def prepare(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, config) -> pathlib.Path:
  """Converts the cohort in `raw_dir`; returns the manifest path. `config` is the `prep` section."""
  raw, out = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  metas, rejected = read_metadata(raw / "metadata.csv")
  done = writer.finished(out)
  todo = [m for m in metas if m["recording_id"] not in done
          or done[m["recording_id"]]["source"] != _source_stamp(raw, m["recording_id"])]
  part = cluster.Slice.from_config(config)  # cluster array jobs: a slice, or the merge
  todo = part.select(metas, todo)
  logging.info("prep: %d recordings, %d already done, %d to convert", len(metas),
               len(metas) - len(todo), len(todo))
  summaries = {m["recording_id"]: done[m["recording_id"]] for m in metas
               if m["recording_id"] in done and m not in todo}
  # Spawned, not forked, workers: the caller may have JAX (multithreaded) loaded, and forking a
  # multithreaded process can deadlock.
  with cf.ProcessPoolExecutor(max_workers=config.workers or None,
                              mp_context=multiprocessing.get_context("spawn")) as pool:
    futures = [pool.submit(_stage_recording, raw, out, m, config) for m in todo]
    for fut in tqdm.tqdm(cf.as_completed(futures), total=len(futures), desc="prep", unit="rec",
                         disable=not todo):
      s = fut.result()
      summaries[s["recording_id"]] = s
  if part.partial:
    print(part.report(len(todo), out))
    return out
  # Summaries as staged (JSON, sorted keys): fresh, resumed and sharded runs report the same bytes.
  staged = writer.finished(out)
  summaries = {rid: staged[rid] for rid in summaries}
  _mark_duplicates(summaries, [m["recording_id"] for m in metas])
  qc.write_qc_report([s["qc"] for s in summaries.values()] + rejected, out)

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
      "features": {"names": list(features.FEATURE_NAMES),
                   "units": [features.UNITS.get(n, "") for n in features.FEATURE_NAMES]},
      "caption_groups": list(captions.GROUPS),
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
                                               "unmatched_labels", "night_summary",
                                               "night_caption")}}
  manifest["availability"] = {
      m: float(np.mean([any(r["present"][m]) for r in manifest["recordings"].values()] or [0.0]))
      for m in modalities}
  path = writer.write_manifest(out, manifest)
  print(f"prep: {len(ok)} recordings converted, {len(summaries) - len(ok) + len(rejected)} skipped "
        f"(QC report: {out / 'qc.csv'})")
  return path


def train_caption_tokenizer(data_dir: str | os.PathLike, vocab_size: int) -> pathlib.Path:
  """Trains the SentencePiece caption tokenizer on the training split's epoch and night captions,
  stores it beside the shards and names it (with its SHA-256) in the manifest."""
  from sleepjax import caption_tokenizer  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(data_dir)
  manifest = json.loads((out / writer.MANIFEST).read_text())
  train = manifest["splits"]["train"]

  def texts():
    for shard in train["shards"]:
      for blob in writer.read_records(out / shard["path"]):
        for group_captions in records.texts(records.decode(blob)[0]["captions"]).values():
          yield from group_captions
    for rid in train["recordings"]:
      yield manifest["recordings"][rid]["night_caption"]

  path = pathlib.Path(caption_tokenizer.train_tokenizer(texts(), out / "tokenizer", vocab_size))
  manifest["tokenizer"] = {"path": path.name, "sha256": writer.sha256(path),
                           "vocab_size": caption_tokenizer.CaptionTokenizer(path).vocab_size}
  writer.write_manifest(out, manifest)
  return path
