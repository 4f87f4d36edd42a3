"""`sleepjax prep`: a cohort directory (EDF + annotations + metadata.csv) -> ArrayRecord shards.

Cohort layout: <raw>/edf/<recording_id>.edf|.bdf, <raw>/annotations/<recording_id>.xml|.csv|.edf
(NSRR XML, CSV, EDF+ annotations or a Sleep-EDF hypnogram), <raw>/metadata.csv with columns
recording_id, subject_id, site and optional age, sex, bmi, ahi.

Per recording: read -> map channels (cohort channel map) -> QC, filter, resample, normalise ->
per-epoch features and captions -> segments of E epochs.

Recordings convert in parallel into staging files (see `writer`); a recording that fails, for any
reason (any exception, or a worker process that dies), is skipped with a reason naming its file in
the QC report and never stops the run. Every file under edf/ and annotations/ that no recording
uses gets a QC row of its own ("not listed in metadata.csv", ...). Re-running resumes: a recording
whose staging summary exists is redone only if its source files, its metadata row or the prep
settings it depends on (`CONVERSION_KEYS`, the channel map's content) changed.

Splits are per subject and stable (`splits`); the manifest records the prep config, the hash of
its conversion settings (also in every record) and the split hash.
"""

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import hashlib
import json
import multiprocessing
import os
import pathlib
import traceback
import zlib

import numpy as np
import tqdm
from absl import logging

from data_prep import (annotations, captions, channels, cluster, edf, features, harmonise,
                       metadata, qc, splits, writer)
from sleepjax import records
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS


def _find(folder: pathlib.Path, recording_id: str, extensions: tuple[str, ...]
          ) -> pathlib.Path | None:
  for ext in extensions:
    for variant in (ext, ext.upper()):
      if (p := folder / f"{recording_id}{variant}").is_file():
        return p
  return None


SIGNAL_EXTENSIONS = (".edf", ".bdf", ".rec")
ANNOTATION_EXTENSIONS = (".xml", ".csv", ".tsv", ".txt", ".edf")
POSITION_LABELS = ("position", "pos", "bodyposition", "body")  # SHHS coding 0..3, 1 Hz or more
# Bump when a change of prep's code changes what a recording converts to: resumed runs redo all.
CONVERSION_VERSION = 3
# Config keys that change a recording's conversion; the others (splits, shards, compression,
# workers) only change the assembly, which every run redoes.
CONVERSION_KEYS = ("modalities", "channel_map", "segment_epochs", "min_duration_s", "seed")
JOB_KEYS = ("raw_dir", "workers", "num_shards", "shard_index", "merge")


def _source_stamp(raw: pathlib.Path, recording_id: str) -> list[list]:
  """Name, size and mtime of a recording's input files: if they change, it is converted again."""
  paths = [raw / folder / f"{recording_id}{v}" for folder, exts in (
      ("edf", SIGNAL_EXTENSIONS), ("annotations", ANNOTATION_EXTENSIONS))
           for e in exts for v in (e, e.upper())]
  return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.is_file()]


def conversion_config(config) -> dict:
  """The prep settings a recording's conversion depends on (with the channel map's content)."""
  out = {k: (list(config[k]) if isinstance(config[k], (tuple, list)) else config[k])
         for k in CONVERSION_KEYS}
  cmap = pathlib.Path(str(config.channel_map))
  if cmap.suffix != ".json":
    cmap = channels.MAPS_DIR / f"{config.channel_map}.json"
  out["channel_map_sha256"] = (hashlib.sha256(cmap.read_bytes()).hexdigest()
                               if cmap.is_file() else None)
  out["version"] = CONVERSION_VERSION
  return out


def config_hash(conf: dict) -> str:
  return hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()[:16]


def _position(rec: edf.Recording, n_epochs: int) -> np.ndarray | None:
  """The body-position channel as integer codes at 1 Hz, if the recording has one."""
  for sig in rec.signals:
    if channels.normalise_label(sig.label) in POSITION_LABELS and sig.rate >= 1:
      codes = np.round(sig.data[::int(round(sig.rate))][:n_epochs * EPOCH_SECONDS])
      return codes if np.isfinite(codes).all() else None
  return None


def _signal_hash(rec: edf.Recording) -> str:
  """Hash of every sample of every signal (not of labels or header): the same night twice."""
  h = hashlib.blake2b(digest_size=32)
  for s in rec.signals:
    h.update(f"{s.rate!r}:{len(s.data)};".encode())
    h.update(np.ascontiguousarray(s.data).data)
  return h.hexdigest()


def convert_recording(raw: pathlib.Path, meta: dict, config, where: dict | None = None
                      ) -> tuple[list[bytes], dict]:
  """One recording -> (encoded segment records, summary with its QC row).

  A trailing partial segment is dropped. A `skip` verdict yields no records. `where` (a dict) is
  kept up to date with the file and step being worked on, for error messages.
  """
  where = {} if where is None else where
  rid = meta["recording_id"]
  qc_config = qc.QCConfig(min_duration_s=config.min_duration_s)
  modalities = list(config.modalities)
  signal_path = _find(raw / "edf", rid, SIGNAL_EXTENSIONS)
  if signal_path is None:
    raise FileNotFoundError(f"edf/{rid}.edf: no signal file ({'/'.join(SIGNAL_EXTENSIONS)}) for "
                            "this recording listed in metadata.csv")
  where.update(file=signal_path, step="reading the signal file")
  rec = edf.read_edf(signal_path, decoder="numpy")
  n_signal = int(rec.duration_s // EPOCH_SECONDS)
  issues = list(rec.warnings)
  ann_path = _find(raw / "annotations", rid, ANNOTATION_EXTENSIONS)
  where.update(file=ann_path or signal_path, step="reading the annotations")
  if ann_path is not None:
    stages, events = annotations.read_annotations(ann_path, n_signal, recording_start=rec.start,
                                                  issues=issues)
  elif annotations.has_stages(rec.annotations):
    issues.append(f"no annotation file; using the stages annotated in {signal_path.name} itself")
    stages, events = annotations.from_edf_annotations(signal_path, rec.annotations, n_signal,
                                                      issues=issues)
  else:
    raise FileNotFoundError(
        f"annotations/{rid}.xml: no annotation file ({'/'.join(ANNOTATION_EXTENSIONS)}) for this "
        f"recording, and {signal_path.name} has no sleep-stage annotations of its own")
  where.update(file=signal_path, step="quality control and harmonisation")
  scored = np.flatnonzero(stages >= 0)
  lengths = qc.check_lengths(n_signal, int(scored[-1]) + 1 if len(scored) else n_signal, qc_config)
  n_epochs = lengths.n_epochs
  stages = stages[:n_epochs]
  resolved = channels.resolve_channels(rec, config.channel_map)
  h = harmonise.harmonise(resolved, n_epochs, modalities, config=qc_config)
  verdict, reasons = qc.recording_verdict(h.qc, duration_s=rec.duration_s, stages=stages,
                                          lengths=lengths, config=qc_config)
  if "no usable modality" in reasons and h.unmatched:
    i = reasons.index("no usable modality")
    reasons[i] += (f" (labels matched by no channel map entry: {', '.join(h.unmatched[:12])}"
                   f"{' ...' if len(h.unmatched) > 12 else ''}; add them to the cohort's channel "
                   "map)")
  if "no scored epochs" in reasons and ann_path is not None:
    i = reasons.index("no scored epochs")
    reasons[i] += f" in {ann_path.name}"
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
             "signal_sha": rec.sample_hash or _signal_hash(rec)}
  if verdict != "ok":
    return [], summary

  where.update(step="computing features and captions")
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
  record_meta = {**meta, "prep_config_hash": config_hash(conversion_config(config))}
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
    out.append(records.encode(arrays, {**record_meta, "first_epoch": first}))
  summary["segments"] = len(out)
  return out, summary


def _relative(text: str, raw: pathlib.Path) -> str:
  """Messages name input files relative to the cohort directory (edf/x.edf), not absolutely."""
  for prefix in {os.fspath(raw), os.fspath(raw.resolve())}:
    text = text.replace(prefix.rstrip(os.sep) + os.sep, "")
  return text


def _failure_reason(e: BaseException, where: dict, raw: pathlib.Path) -> str:
  """A sentence a person can act on, naming the file, for any exception."""
  file = where.get("file")
  name = _relative(os.fspath(file), raw) if file else "?"
  message = _relative(str(e), raw)
  if isinstance(e, (ValueError, FileNotFoundError)) and (not file or name in message
                                                         or message.startswith(("edf/", "annot"))):
    return message  # the readers' own messages name the file and the problem
  if isinstance(e, MemoryError):
    return (f"{name}: out of memory while {where.get('step', 'converting')}; the file implies "
            "more data than this machine holds (check its header and annotations)")
  if isinstance(e, (ValueError, OSError)):
    return f"{name}: {message} (while {where.get('step', 'converting')})"
  return (f"{name}: unexpected {type(e).__name__} while {where.get('step', 'converting')}: "
          f"{message}. The file is malformed in a way prep does not recognise; check it in an "
          "EDF viewer, and please report it (the traceback is in the staging summary)")


def _stage_recording(raw: pathlib.Path, out: pathlib.Path, meta: dict, config,
                     stamp: dict) -> dict:
  """Converts one recording into staging files; any failure becomes a `skip` verdict."""
  rid = meta["recording_id"]
  staging = writer.staging_dir(out)
  summary = {"recording_id": rid, "meta": meta, **stamp}
  where = {}
  try:
    recs, info = convert_recording(raw, meta, config, where)
    info["reasons"] = [_relative(r, raw) for r in info["reasons"]]
    info["qc"]["reasons"] = info["reasons"]
    info["qc"]["notes"] = [_relative(n, raw) for n in info["qc"]["notes"]]
    if recs:
      where.update(step="writing the staging file", file=staging / f"{rid}.array_record")
      writer.write_records(_inside(staging, f"{rid}.array_record"), recs)
    summary.update(info)
  except Exception as e:  # pylint: disable=broad-except  (any input problem: report, go on)
    reason = _failure_reason(e, where, raw)
    summary.update(verdict="skip", reasons=[reason], qc=qc.error_row(rid, reason),
                   subject=meta["subject_id"])
    if not isinstance(e, (ValueError, OSError)):
      summary["traceback"] = traceback.format_exc()
  summary["qc"]["notes"] = stamp["meta_notes"] + summary["qc"].get("notes", [])
  writer.write_json(_inside(staging, f"{rid}.json"), summary)  # last: marks it done
  return summary


def _inside(folder: pathlib.Path, name: str) -> pathlib.Path:
  """folder/name, refusing any name that would land elsewhere (ids are checked before, too)."""
  path = folder / name
  if path.resolve().parent != folder.resolve():
    raise ValueError(f"{name!r} would be written outside {folder}")
  return path


def _mark_duplicates(summaries: dict[str, dict], order: list[str]):
  """The same night under two ids (identical signals): keep the id listed first in the metadata."""
  first_of = {}
  for rid in order:
    s = summaries[rid]
    if s["verdict"] != "ok":
      continue
    if (orig := first_of.setdefault(s["signal_sha"], rid)) != rid:
      reason = (f"duplicate of {orig} (every sample of every signal identical; subject "
                f"{summaries[orig]['subject']} vs {s['subject']}): remove one of the two")
      s["verdict"], s["reasons"] = "skip", [reason]
      s["qc"] = {**s["qc"], "verdict": "skip", "reasons": [reason]}


def _inventory(raw: pathlib.Path, listed: set[str], rejected_ids: set[str]) -> list[dict]:
  """QC rows for every file under edf/ and annotations/ that no listed recording uses."""
  rows = []
  for folder, exts in (("edf", SIGNAL_EXTENSIONS), ("annotations", ANNOTATION_EXTENSIONS)):
    if not (raw / folder).is_dir():
      continue
    for p in sorted((raw / folder).iterdir()):
      if p.name.startswith("."):
        continue
      rid, name = p.stem, f"{folder}/{p.name}"
      if p.is_dir():
        reason = f"{name}: a folder; prep reads only the files directly under {folder}/"
      elif p.suffix.lower() not in exts:
        reason = f"{name}: not a {folder} file (extensions read: {', '.join(exts)})"
      elif rid in rejected_ids:
        reason = f"{name}: its metadata.csv row was rejected (see that row)"
      elif rid not in listed:
        reason = (f"{name}: not listed in metadata.csv; add a row (recording_id {rid}, "
                  "subject_id, site) to convert it")
      elif (used := _find(raw / folder, rid, exts)) != p:
        reason = f"{name}: not used: {used.name} is read for recording {rid}"
      else:
        continue
      rows.append(qc.error_row(name, reason))
  return rows


def _run_pool(raw, out, todo, config, stamps, summaries):
  """Stages `todo` in worker processes (a fork server's, see below). A worker that dies (a crash
  in a native reader, the kernel's OOM killer) breaks the pool: what was in flight is retried one
  per process, so the recording that kills its process is the one reported."""
  # Not forked from the caller, which may have JAX (multithreaded) loaded: forking a multithreaded
  # process can deadlock. Forked from a fork server (a fresh single-threaded process, one per
  # caller, started on first use) that imported this module once, not spawned: a spawned worker
  # imports scipy and the readers itself, ~2.8 CPU-s each (BENCHMARKS.md "The test suite").
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([__name__])
  retry = []
  with cf.ProcessPoolExecutor(max_workers=config.workers or None, mp_context=context) as pool:
    futures = {pool.submit(_stage_recording, raw, out, m, config, stamps[m["recording_id"]]): m
               for m in todo}
    for fut in tqdm.tqdm(cf.as_completed(futures), total=len(futures), desc="prep", unit="rec",
                         disable=not todo):
      try:
        s = fut.result()
      except BrokenProcessPool:
        retry.append(futures[fut])
        continue
      summaries[s["recording_id"]] = s
  for m in retry:
    rid = m["recording_id"]
    try:
      with cf.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        summaries[rid] = pool.submit(_stage_recording, raw, out, m, config, stamps[rid]).result()
    except BrokenProcessPool:
      reason = (f"edf/{rid}: the worker process converting this recording died (out of memory, "
                "or a crash in a native reader); check the file in an EDF viewer")
      s = {"recording_id": rid, "meta": m, **stamps[rid], "verdict": "skip", "reasons": [reason],
           "qc": qc.error_row(rid, reason), "subject": m["subject_id"]}
      s["qc"]["notes"] = stamps[rid]["meta_notes"]
      writer.write_json(_inside(writer.staging_dir(out), f"{rid}.json"), s)
      summaries[rid] = s


def _changed_keys(old: dict | None, new: dict) -> list[str]:
  if old is None:
    return ["(no record of the config)"]
  return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def prepare(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, config) -> pathlib.Path:
  """Converts the cohort in `raw_dir`; returns the manifest path. `config` is the `prep` section."""
  raw, out = pathlib.Path(raw_dir), pathlib.Path(out_dir)
  if not raw.is_dir():
    raise ValueError(f"{raw}: no such cohort directory (it needs edf/, annotations/ and "
                     "metadata.csv)")
  sex_codes = channels.load_map(config.channel_map).sex_codes
  metas, rejected, meta_notes, file_notes = metadata.read_metadata(raw / "metadata.csv", sex_codes)
  out.mkdir(parents=True, exist_ok=True)
  conversion = conversion_config(config)
  conv_hash = config_hash(conversion)
  stamps = {m["recording_id"]: {"source": _source_stamp(raw, m["recording_id"]),
                                "conversion_hash": conv_hash, "conversion": conversion,
                                "meta_notes": meta_notes[m["recording_id"]]} for m in metas}
  done = writer.finished(out)
  todo, changed = [], {}
  for m in metas:
    rid = m["recording_id"]
    old = done.get(rid)
    if old is None:
      todo.append(m)
    elif old.get("conversion_hash") != conv_hash:
      todo.append(m)
      for k in _changed_keys(old.get("conversion"), conversion):
        changed[k] = changed.get(k, 0) + 1
    elif (old["source"] != stamps[rid]["source"] or old.get("meta") != m
          or old.get("meta_notes") != stamps[rid]["meta_notes"]):
      todo.append(m)
  part = cluster.Slice.from_config(config)  # cluster array jobs: a slice, or the merge
  todo = part.select(metas, todo)
  logging.info("prep: %d recordings, %d already done, %d to convert", len(metas),
               len(metas) - len(todo), len(todo))
  if changed:
    print(f"prep: the prep config changed since {max(changed.values())} recordings were "
          f"converted ({'; '.join(changed)}); converting them again")
  redo = {m["recording_id"] for m in todo}
  summaries = {m["recording_id"]: done[m["recording_id"]] for m in metas
               if m["recording_id"] in done and m["recording_id"] not in redo}
  _run_pool(raw, out, todo, config, stamps, summaries)
  if part.partial:
    print(part.report(len(todo), out))
    return out
  # Summaries as staged (JSON, sorted keys): fresh, resumed and sharded runs report the same bytes.
  staged = writer.finished(out)
  summaries = {m["recording_id"]: staged[m["recording_id"]] for m in metas}
  _mark_duplicates(summaries, [m["recording_id"] for m in metas])
  listed = {m["recording_id"] for m in metas}
  rejected_ids = {r["recording_id"].split("@line")[0] for r in rejected}
  inventory = _inventory(raw, listed, rejected_ids)
  rows = [summaries[m["recording_id"]]["qc"] for m in metas] + rejected + inventory
  qc.write_qc_report(rows, out, notes=file_notes)

  ok = {rid: s for rid, s in summaries.items() if s["verdict"] == "ok"}
  fractions = dict(config.split_fractions)
  split_of = splits.assign_splits([s["subject"] for s in ok.values()], fractions, config.seed)
  modalities = list(config.modalities)
  skipped = {r["recording_id"]: r["reasons"] for r in rows if r["verdict"] != "ok"}
  prep_config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  for k in JOB_KEYS:  # how the run was laid out, not what it made: not in the manifest
    prep_config.pop(k, None)
  manifest = {
      "schema_version": records.SCHEMA_VERSION, "epoch_seconds": EPOCH_SECONDS,
      "segment_epochs": config.segment_epochs,
      "prep_config": json.loads(json.dumps(prep_config, default=list)),
      "prep_config_hash": conv_hash, "conversion": conversion,
      "modalities": {m: {"rate": CANONICAL[m].rate, "channels": list(CANONICAL[m].channels),
                         "unit": CANONICAL[m].unit} for m in modalities},
      "sites": sorted({s["site"] for s in ok.values()}),
      "features": {"names": list(features.FEATURE_NAMES),
                   "units": [features.UNITS.get(n, "") for n in features.FEATURE_NAMES]},
      "caption_groups": list(captions.GROUPS),
      "recordings": {}, "splits": {},
      "split_rule": {"rule": splits.RULE, "seed": config.seed, "fractions": fractions,
                     "hash": splits.split_hash(split_of)},
      "qc_summary": {"rows": len(rows), "ok": len(ok), "skipped": len(skipped)},
      "skipped": skipped, "notes": file_notes,
  }
  for split in fractions:
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
  manifest["split_hash"] = manifest["split_rule"]["hash"]
  manifest["availability"] = {
      m: float(np.mean([any(r["present"][m]) for r in manifest["recordings"].values()] or [0.0]))
      for m in modalities}
  path = writer.write_manifest(out, manifest)
  empty = [k for k, f in fractions.items() if f > 0 and not manifest["splits"][k]["recordings"]]
  for note in file_notes:
    print(f"prep: note: {note}")
  print(f"prep: {len(ok)} recordings converted, {len(skipped)} skipped"
        + (f" (of which {len(inventory)} files not matched to a metadata row)" if inventory else "")
        + (f"; split {', '.join(empty)} is empty (too few subjects)" if empty else "")
        + f" (QC report: {out / 'qc.csv'})")
  if not ok:
    raise ValueError(f"{raw}: no recording converted ({len(skipped)} skipped); the reason for "
                     f"each is in {out / 'qc.csv'}")
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
