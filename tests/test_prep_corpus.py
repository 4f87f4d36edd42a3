"""A generated bad-input corpus: every fault gets its verdict and a reason that names the problem;
good recordings convert byte-identically whatever bad ones sit beside them.

Recordings are tiny (6 minutes, EEG at 64 Hz and SpO2 at 1 Hz, 1-s data records) so one prep run
over the whole corpus takes seconds. Each fault is a function that writes one recording's files
(and its metadata row) into a cohort directory; `FAULTS` lists them with the expected verdict and
a regular expression that the recording's reasons (verdict skip) or notes (verdict ok) must match.
"""

import csv
import dataclasses
import datetime
import json
import pathlib
import random
import re
import shutil
import zlib

import numpy as np
import pyedflib
import pytest

from data_prep import metadata, prep, writer
from data_prep.writer import STAGING
from sleepjax.data import manifest as manifest_lib

START = datetime.datetime(2020, 5, 6, 22, 0, 0)
MINUTES = 6
EEG_RATE = 64
COLUMNS = ("recording_id", "subject_id", "site", "age", "sex", "bmi", "ahi")
STAGES = ["Wake|0", "Stage 1 sleep|1", "Stage 2 sleep|2", "Stage 2 sleep|2", "Stage 3 sleep|3",
          "REM sleep|5"]


# ------------------------------------------------------------------------------ good inputs
def _signals(seed: int, minutes: int = MINUTES, prefix=None):
  rng = np.random.default_rng(seed)
  n = minutes * 60 * EEG_RATE
  eeg = np.convolve(rng.standard_normal(n + 4), np.ones(5) / 5, "valid")[:n] * 40.0
  if prefix is not None:
    eeg[:len(prefix)] = prefix
  spo2 = np.round(96 + rng.normal(0, 0.8, minutes * 60))
  return eeg, spo2


def write_edf(path, seed=0, *, bdf=False, minutes=MINUTES, labels=("C4-M1", "SpO2"), notes=(),
              plus=True, prefix=None, start=START, flat=False):
  eeg, spo2 = _signals(seed, minutes, prefix)
  if flat:  # dead sensors: a flat EEG and an oximeter reading 0 %
    eeg, spo2 = np.zeros_like(eeg), np.zeros_like(spo2)
  dmax = 8388607 if bdf else 32767
  kind = ((pyedflib.FILETYPE_BDFPLUS if plus else pyedflib.FILETYPE_BDF) if bdf else
          (pyedflib.FILETYPE_EDFPLUS if plus else pyedflib.FILETYPE_EDF))
  w = pyedflib.EdfWriter(str(path), 2, file_type=kind)
  w.setSignalHeaders([
      {"label": labels[0], "dimension": "uV", "sample_frequency": EEG_RATE, "physical_min": -500,
       "physical_max": 500, "digital_min": -dmax - 1, "digital_max": dmax, "transducer": "",
       "prefilter": ""},
      {"label": labels[1], "dimension": "%", "sample_frequency": 1, "physical_min": 0,
       "physical_max": 100, "digital_min": -dmax - 1, "digital_max": dmax, "transducer": "",
       "prefilter": ""}])
  w.setStartdatetime(start)
  w.writeSamples([eeg, spo2])
  for onset, duration, text in notes:
    w.writeAnnotation(onset, duration, text)
  w.close()
  return path


def nsrr_xml(concepts=None, extra="", epochs=MINUTES * 2):
  if concepts is None:
    concepts = [STAGES[k % len(STAGES)] for k in range(epochs)]
  events = "".join(
      f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>{c}</EventConcept>"
      f"<Start>{30 * k}</Start><Duration>30</Duration></ScoredEvent>"
      for k, c in enumerate(concepts))
  return ('<?xml version="1.0" encoding="UTF-8"?>\n<PSGAnnotation><EpochLength>30</EpochLength>'
          f"<ScoredEvents>{events}{extra}</ScoredEvents></PSGAnnotation>")


def profusion_xml(stages=None, extra=""):
  stages = stages if stages is not None else [0, 1, 2, 2, 3, 4, 5, 2, 2, 5, 0, 2]
  return ("<CMPStudyConfig><EpochLength>30</EpochLength><ScoredEvents><ScoredEvent>"
          "<Name>Obstructive Apnea</Name><Start>100</Start><Duration>15</Duration>"
          f"<Input>ABDO RES</Input></ScoredEvent>{extra}</ScoredEvents><SleepStages>"
          + "".join(f"<SleepStage>{s}</SleepStage>" for s in stages)
          + "</SleepStages></CMPStudyConfig>")


def meta_row(rid, **changes):
  return {"recording_id": rid, "subject_id": f"subj-{rid}", "site": "A", "age": "50",
          "sex": "M", "bmi": "27.5", "ahi": "5.0", **changes}


def good(raw, rid, seed, **edf_kwargs):
  write_edf(raw / "edf" / f"{rid}.edf", seed, **edf_kwargs)
  (raw / "annotations" / f"{rid}.xml").write_text(nsrr_xml())
  return [meta_row(rid)]


def write_metadata(raw, rows):
  with open(raw / "metadata.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)


# ---------------------------------------------------------------------------- fault helpers
def _mutated(raw, rid, seed, mutate, *, bdf=False, ext=".edf", xml=True, **edf_kwargs):
  """A good recording whose signal file bytes go through `mutate(bytearray) -> bytes`."""
  path = raw / "edf" / f"{rid}{ext}"
  write_edf(path, seed, bdf=bdf, **edf_kwargs)
  path.write_bytes(bytes(mutate(bytearray(path.read_bytes()))))
  if xml:
    (raw / "annotations" / f"{rid}.xml").write_text(nsrr_xml())
  return [meta_row(rid)]


def _field(kind: str, signal: int = 0, n_signals: int = 3):
  """Byte offset and width of a header field (EDF+ files here have 3 signals)."""
  fixed = {"version": (0, 8), "start_date": (168, 8), "start_time": (176, 8),
           "header_bytes": (184, 8), "reserved": (192, 44), "n_records": (236, 8),
           "duration": (244, 8), "n_signals": (252, 4)}
  if kind in fixed:
    return fixed[kind]
  offset, width = {"label": (0, 16), "physical_min": (104, 8), "physical_max": (112, 8),
                   "digital_min": (120, 8), "digital_max": (128, 8), "samples": (216, 8)}[kind]
  return 256 + offset * n_signals + width * signal, width


def setf(kind, text, signal=0):
  def mutate(raw):
    offset, width = _field(kind, signal)
    raw[offset:offset + width] = text.encode("latin-1").ljust(width)[:width]
    return raw
  return mutate


def header_fault(kind, text, signal=0, **kwargs):
  return lambda raw, rid, seed: _mutated(raw, rid, seed, setf(kind, text, signal), **kwargs)


def bytes_fault(mutate, **kwargs):
  return lambda raw, rid, seed: _mutated(raw, rid, seed, mutate, **kwargs)


def _record_onsets(onsets_of, reserved="EDF+D"):
  """Rewrites each data record's time-keeping TAL: onsets_of(n_records) -> list of strings."""
  def mutate(raw):
    n_records = int(raw[236:244].decode().strip())
    spr = [int(raw[256 + 216 * 3 + 8 * i:256 + 216 * 3 + 8 * (i + 1)].decode()) for i in range(3)]
    record = sum(spr) * 2
    offset, width = (spr[0] + spr[1]) * 2, spr[2] * 2
    raw[192:197] = reserved.encode()
    for r, onset in enumerate(onsets_of(n_records)):
      lo = 256 * 4 + r * record + offset
      old = bytes(raw[lo:lo + width])
      rest = old[old.index(b"\x14\x14\x00") + 3:]
      raw[lo:lo + width] = (onset.encode() + b"\x14\x14\x00" + rest)[:width].ljust(width, b"\0")
    return raw
  return mutate


def annotation_fault(name, text, encoding="utf-8"):
  def build(raw, rid, seed):
    write_edf(raw / "edf" / f"{rid}.edf", seed)
    (raw / "annotations" / f"{rid}{pathlib.Path(name).suffix}").write_bytes(text.encode(encoding))
    return [meta_row(rid)]
  return build


def row_fault(**changes):
  def build(raw, rid, seed):
    good(raw, rid, seed)
    return [meta_row(rid, **changes)]
  return build


def bad_id_fault(bad_id):
  def build(raw, rid, seed):
    good(raw, rid, seed)  # files under the good id: accounted for as "row rejected"
    return [meta_row(rid, recording_id=bad_id)]
  return build


def _no_annotation_file(raw, rid, seed, notes=()):
  write_edf(raw / "edf" / f"{rid}.edf", seed, notes=notes)
  return [meta_row(rid)]


def _embedded(raw, rid, seed):
  notes = [(30.0 * k, 30.0, f"Sleep stage {'W12232R'[k % 7]}") for k in range(MINUTES * 2)]
  return _no_annotation_file(raw, rid, seed, notes)


def _no_signal(raw, rid, seed):
  (raw / "annotations" / f"{rid}.xml").write_text(nsrr_xml())
  return [meta_row(rid)]


def _unlisted_edf(raw, rid, seed):
  write_edf(raw / "edf" / f"{rid}.edf", seed)
  return []


def _unlisted_annotation(raw, rid, seed):
  (raw / "annotations" / f"{rid}.xml").write_text(nsrr_xml())
  return []


def _stray(raw, rid, seed):
  (raw / "edf" / f"{rid}.txt").write_text("notes from the night technician\n")
  return []


def _second_annotation(raw, rid, seed):
  rows = good(raw, rid, seed)
  (raw / "annotations" / f"{rid}.csv").write_text("onset,duration,label\n0,30,W\n")
  return rows


def _duplicate(raw, rid, seed):
  shutil.copy(raw / "edf" / "good-0.edf", raw / "edf" / f"{rid}.edf")
  (raw / "annotations" / f"{rid}.xml").write_text(nsrr_xml())
  return [meta_row(rid)]


def _same_start(raw, rid, seed):
  """Three minutes identical to good-1, then different: not a duplicate."""
  prefix = _signals(1)[0][:3 * 60 * EEG_RATE]
  return good(raw, rid, seed, prefix=prefix)


@dataclasses.dataclass(frozen=True)
class Fault:
  build: object  # (raw, rid, seed) -> metadata rows
  verdict: str  # "skip" or "ok"
  pattern: str  # regex the reasons (skip) or notes (ok) must match
  row: str = ""  # QC row id when not the recording id ("edf/{rid}.edf", "metadata.csv")
  kind: str = ""  # EDF, BDF, EDF+, XML, CSV, metadata, files
  converts: bool | None = None  # the recording under the fault's name converts (default: ok)

  @property
  def good(self) -> bool:
    return self.verdict == "ok" if self.converts is None else self.converts


E, B, P, X, C, M, F = "EDF", "BDF", "EDF+", "XML", "CSV", "metadata", "files"
NOISE_EVENT = ("<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>"
               "Hypopnea|Hypopnea</EventConcept><Start>{start}</Start><Duration>{duration}"
               "</Duration></ScoredEvent>")

FAULTS = {
    # --- EDF / EDF+ signal files
    "empty-file": Fault(bytes_fault(lambda r: b""), "skip", r"too short for an EDF/BDF header", kind=E),
    "cut-at-100": Fault(bytes_fault(lambda r: r[:100]), "skip", r"too short for an EDF/BDF header", kind=E),
    "png": Fault(bytes_fault(lambda r: b"\x89PNG\r\n\x1a\n" + bytes(300)), "skip", r"not an EDF/BDF file: .*PNG image", kind=E),
    "text": Fault(bytes_fault(lambda r: b"time,eeg\n" * 40), "skip", r"not an EDF/BDF file: .*text file", kind=E),
    "version": Fault(header_fault("version", "\x01\x02xyz"), "skip", r"not an EDF/BDF file", kind=E),
    "n-signals-text": Fault(header_fault("n_signals", "ab"), "skip", r"number of signals 'ab'", kind=E),
    "n-signals-zero": Fault(header_fault("n_signals", "0"), "skip", r"number of signals '0'", kind=E),
    "header-size": Fault(header_fault("header_bytes", "9999"), "skip", r"header size 9999", kind=E),
    "n-records-text": Fault(header_fault("n_records", "many"), "skip", r"number of data records 'many'", kind=E),
    "n-records-negative": Fault(header_fault("n_records", "-5"), "skip", r"number of data records -5", kind=E),
    "duration-text": Fault(header_fault("duration", "one"), "skip", r"data record duration 'one'", kind=E),
    "duration-nan": Fault(header_fault("duration", "nan"), "skip", r"data record duration 'nan' is not a finite number", kind=E),
    "duration-zero": Fault(header_fault("duration", "0"), "skip", r"data record duration 0", kind=E),
    "duration-1e-6": Fault(header_fault("duration", "1e-6"), "skip", r"per 1e-06-s data record is .* Hz, above", kind=E),
    "duration-huge": Fault(header_fault("duration", "99999999"), "skip", r"more than the 72 h", kind=E),
    "digital-range": Fault(header_fault("digital_max", "40000"), "skip", r"digital range .* outside EDF", kind=E),
    "digital-empty": Fault(header_fault("digital_max", "-32768"), "skip", r"digital range .* is empty", kind=E),
    "physical-empty": Fault(header_fault("physical_max", "-500"), "skip", r"empty physical range of 'C4-M1'", kind=E),
    "physical-inf": Fault(header_fault("physical_min", "-inf"), "skip", r"physical minimum of 'C4-M1' '-inf' is not a finite", kind=E),
    "samples-zero": Fault(header_fault("samples", "0"), "skip", r"0 samples per record in 'C4-M1'", kind=E),
    "samples-text": Fault(header_fault("samples", "lots"), "skip", r"samples per record of 'C4-M1' 'lots'", kind=E),
    "truncated": Fault(bytes_fault(lambda r: r[:len(r) // 2]), "skip", r"truncated: header declares 360 data records", kind=E),
    "truncated-header": Fault(bytes_fault(lambda r: r[:600]), "skip", r"truncated inside the header", kind=E),
    "unmapped-labels": Fault(lambda raw, rid, seed: good(raw, rid, seed, labels=("FOO", "BAR")), "skip", r"no usable modality \(labels matched by no channel map entry: FOO, BAR", kind=E),
    "too-short": Fault(lambda raw, rid, seed: good(raw, rid, seed, minutes=2), "skip", r"too short: 0\.03 h", kind=E),
    "flat": Fault(lambda raw, rid, seed: good(raw, rid, seed, flat=True), "skip", r"no usable modality", kind=E),
    "record-count-unknown": Fault(header_fault("n_records", "-1"), "ok", r"number of data records is -1", kind=E),
    "trailing-bytes": Fault(bytes_fault(lambda r: r + bytes(100)), "ok", r"100 bytes after the last data record ignored", kind=E),
    "start-date": Fault(header_fault("start_date", "32.13.xx"), "ok", r"unreadable start date", kind=E),
    "plain-edf": Fault(lambda raw, rid, seed: good(raw, rid, seed, plus=False), "ok", r"^$", kind=E),
    # --- EDF+ time keeping
    "record-at-1e9": Fault(bytes_fault(_record_onsets(lambda n: [f"+{r}" for r in range(n - 1)] + ["+1000000000"])), "skip", r"data record 359 starts at 1e\+09 s: .* would span", kind=P),
    "record-onset-nan": Fault(bytes_fault(_record_onsets(lambda n: ["+0", "+nan"] + [f"+{r}" for r in range(2, n)])), "skip", r"data record 1: time-keeping onset nan s is not a finite number", kind=P),
    "records-apart": Fault(bytes_fault(lambda r: _record_onsets(lambda n: [f"+{10 * r}" for r in range(n)])(setf("duration", "0.5")(r))), "skip", r"records are typically 10 s apart .* says each lasts 0\.5 s", kind=P),
    "records-overlap": Fault(bytes_fault(_record_onsets(lambda n: ["+0", "+0.5"] + [f"+{r}" for r in range(2, n)])), "skip", r"data record 1 starts at 0\.5 s, before the end of record 0", kind=P),
    "no-time-keeping": Fault(bytes_fault(_record_onsets(lambda n: ["xyz"] + [f"+{r}" for r in range(1, n)])), "skip", r"data record 0 has no time-keeping annotation", kind=P),
    "gap-d": Fault(bytes_fault(_record_onsets(lambda n: [f"+{r + (60 if r >= 120 else 0)}" for r in range(n)])), "ok", r"^$", kind=P),
    "annotation-at-1e12": Fault(bytes_fault(lambda r: r.replace(b"+10\x151\x14Arousal\x14\x00\x00", b"+1e12\x151\x14Arousal\x14"), notes=[(10.0, 1.0, "Arousal")]), "ok", r"annotation 'Arousal' at 1e\+12 s lies outside any plausible recording; dropped", kind=P),
    # --- BDF
    "bdf-good": Fault(lambda raw, rid, seed: good(raw, rid, seed, bdf=True), "ok", r"^$", kind=B),
    "bdf-truncated": Fault(bytes_fault(lambda r: r[:-1000], bdf=True, ext=".bdf"), "skip", r"\.bdf: truncated", kind=B),
    "bdf-digital-range": Fault(bytes_fault(setf("digital_max", "9000000"), bdf=True, ext=".bdf"), "skip", r"digital range .* outside BDF", kind=B),
    "bdf-version": Fault(bytes_fault(lambda r: b"\xffBIOSEMX" + r[8:], bdf=True, ext=".bdf"), "skip", r"not an EDF/BDF file", kind=B),
    # --- XML annotations
    "xml-malformed": Fault(annotation_fault("a.xml", "<PSGAnnotation><ScoredEvents>"), "skip", r"\.xml: malformed annotation XML", kind=X),
    "xml-duration-1e999": Fault(annotation_fault("a.xml", nsrr_xml(extra=NOISE_EVENT.format(start=60, duration="1e999"))), "ok", r"ScoredEvent 12 'Hypopnea\|Hypopnea': duration inf s is not a plausible time", kind=X),
    "xml-start-text": Fault(annotation_fault("a.xml", nsrr_xml(extra=NOISE_EVENT.format(start="soon", duration=10))), "ok", r"ScoredEvent 12 \('Hypopnea\|Hypopnea'\): Start 'soon' is not a number", kind=X),
    "xml-unknown-root": Fault(annotation_fault("a.xml", "<Hypnogram><Epoch>W</Epoch></Hypnogram>"), "skip", r"neither NSRR XML .* root element <Hypnogram>", kind=X),
    "xml-no-stages": Fault(annotation_fault("a.xml", nsrr_xml(concepts=[], extra=NOISE_EVENT.format(start=60, duration=10))), "skip", r"no scored epochs in .*\.xml", kind=X),
    "xml-unknown-stage": Fault(annotation_fault("a.xml", nsrr_xml([STAGES[k % 6] if k != 3 else "Stage X|X" for k in range(12)])), "ok", r"1 stage annotations with unknown labels left unscored \('Stage X\|X' x1\)", kind=X),
    "xml-words-only": Fault(annotation_fault("a.xml", nsrr_xml(["Wake", "N1", "N2", "N2", "N3", "REM"] * 2)), "ok", r"^$", kind=X),
    "xml-profusion": Fault(annotation_fault("a.xml", profusion_xml()), "ok", r"^$", kind=X),
    "xml-profusion-garbage-stage": Fault(annotation_fault("a.xml", profusion_xml([0, 1, 2, "x", 3, 5, 2, 2, 2, 5, 0, 2])), "ok", r"stage annotations with unknown labels left unscored \('x' x1\)", kind=X),
    "xml-overrun": Fault(annotation_fault("a.xml", nsrr_xml(extra=NOISE_EVENT.format(start=350, duration=40))), "ok", r"'Hypopnea\|Hypopnea' at 350-390 s overruns the recording", kind=X),
    "xml-short": Fault(annotation_fault("a.xml", nsrr_xml(epochs=3)), "skip", r"length mismatch: annotations stop short of the signal by 9 epochs", kind=X),
    # --- CSV annotations
    "csv-no-label": Fault(annotation_fault("a.csv", "onset,duration\n0,30\n"), "skip", r"\.csv: no label column", kind=C),
    "csv-nan-onset": Fault(annotation_fault("a.csv", "onset,duration,label\n" + "".join(f"{30 * k},30,N2\n" for k in range(12)) + "nan,30,REM\n"), "ok", r"line 14 'REM': onset nan s is not a plausible time; dropped", kind=C),
    "csv-bad-duration": Fault(annotation_fault("a.csv", "onset,duration,label\n0,thirty,W\n"), "skip", r"line 2: duration 'thirty' is not a number", kind=C),
    "csv-empty": Fault(annotation_fault("a.csv", ""), "skip", r"\.csv: empty annotation table", kind=C),
    "csv-ragged": Fault(annotation_fault("a.csv", "onset,duration,label\n0,30,W\n30,N1\n"), "skip", r"line 3 has 2 fields, the header 3", kind=C),
    "csv-latin1": Fault(annotation_fault("a.csv", "onset,duration,label\n" + "".join(f"{30 * k},30,N2\n" for k in range(12)) + "100,0,Lichter aus (Jürgen)\n", "latin-1"), "ok", r"csv-latin1\.csv: not UTF-8 \(byte 0xfc\); read as Latin-1", kind=C),
    "csv-binary": Fault(annotation_fault("a.csv", "onset\x00\xff\xfe,label\n", "latin-1"), "skip", r"\.csv: not a text table", kind=C),
    "csv-bad-time": Fault(annotation_fault("a.csv", "onset,duration,label\nmidnight,30,W\n"), "skip", r"line 2: onset 'midnight' is neither seconds", kind=C),
    # --- annotation / signal pairing
    "embedded-stages": Fault(_embedded, "ok", r"no annotation file; using the stages annotated in", kind=P),
    "no-annotations": Fault(_no_annotation_file, "skip", r"no annotation file .* has no sleep-stage annotations", kind=F),
    "no-signal": Fault(_no_signal, "skip", r"edf/.*\.edf: no signal file", kind=F),
    "unlisted-edf": Fault(_unlisted_edf, "skip", r"not listed in metadata\.csv", row="edf/{rid}.edf", kind=F),
    "unlisted-annotation": Fault(_unlisted_annotation, "skip", r"not listed in metadata\.csv", row="annotations/{rid}.xml", kind=F),
    "stray-file": Fault(_stray, "skip", r"not a edf file", row="edf/{rid}.txt", kind=F),
    "second-annotation": Fault(_second_annotation, "skip", r"not used: .*\.xml is read for recording", row="annotations/{rid}.csv", kind=F, converts=True),
    "duplicate": Fault(_duplicate, "skip", r"duplicate of good-0 \(every sample", kind=F),
    "same-start": Fault(_same_start, "ok", r"^$", kind=F),
    # --- metadata rows
    "no-subject": Fault(row_fault(subject_id=""), "skip", r"no subject_id on this line", row="metadata.csv", kind=M),
    "id-slash": Fault(bad_id_fault("a/b"), "skip", r"recording_id 'a/b' contains a path separator", row="metadata.csv", kind=M),
    "id-dotdot": Fault(bad_id_fault("../../escape"), "skip", r"recording_id '\.\./\.\./escape' contains a path separator", row="metadata.csv", kind=M),
    "id-dots-only": Fault(bad_id_fault(".."), "skip", r"recording_id '\.\.' contains '\.\.'", row="metadata.csv", kind=M),
    "id-control": Fault(bad_id_fault("bad\x07id"), "skip", r"contains control characters", row="metadata.csv", kind=M),
    "id-listed-twice": Fault(lambda raw, rid, seed: good(raw, rid, seed) * 2, "skip", r"listed twice; the first row wins", row="{rid}@line", kind=M, converts=True),
    "sex-code-unknown": Fault(row_fault(sex="7"), "ok", r"metadata sex '7' is not a known code", kind=M),
    "sex-code-nsrr": Fault(row_fault(sex="2"), "ok", r"^$", kind=M),
    "age-text": Fault(row_fault(age="abc"), "ok", r"metadata age 'abc' is not a number; set to missing", kind=M),
    "age-negative": Fault(row_fault(age="-5"), "ok", r"metadata age -5 is implausible", kind=M),
    "bmi-900": Fault(row_fault(bmi="900"), "ok", r"metadata bmi 900 is implausible", kind=M),
}
N_GOOD = 3
# Skipped by a QC verdict on a readable recording (the row is the recording; reasons are QC's).
QC_VERDICTS = {"unmapped-labels", "too-short", "flat", "xml-no-stages", "xml-short", "duplicate"}


def build_cohort(raw: pathlib.Path, faults) -> list[dict]:
  for d in ("edf", "annotations"):
    (raw / d).mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(N_GOOD):
    rows += good(raw, f"good-{i}", i)
  for name in faults:  # a fault's recording is the same whatever else is in the cohort
    rows += FAULTS[name].build(raw, name, 100 + zlib.crc32(name.encode()) % 10000)
  write_metadata(raw, rows)
  return rows


def _config(prep_config, **changes):
  c = prep_config.copy_and_resolve_references()
  c.min_duration_s, c.segment_epochs, c.workers = 300, 4, 2
  for k, v in changes.items():
    c[k] = v
  return c


def _shards(manifest):
  return {s["path"]: s["sha256"] for v in manifest["splits"].values() for s in v["shards"]}


def _good_names():
  return [f"good-{i}" for i in range(N_GOOD)] + sorted(k for k, f in FAULTS.items() if f.good)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_config):
  """The whole corpus prepared once, plus the good recordings alone."""
  root = tmp_path_factory.mktemp("corpus")
  build_cohort(root / "raw", FAULTS)
  config = _config(tiny_config.prep)
  manifest = json.loads(prep.prepare(root / "raw", root / "data", config).read_text())
  only_good = [k for k in FAULTS if FAULTS[k].good]
  build_cohort(root / "good", only_good)
  alone = json.loads(prep.prepare(root / "good", root / "good-data", config).read_text())
  return root, config, manifest, alone


def test_corpus_has_forty_distinct_faults_across_formats():
  assert len(FAULTS) >= 40
  kinds = {f.kind for f in FAULTS.values()}
  assert {"EDF", "BDF", "EDF+", "XML", "CSV", "metadata"} <= kinds


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_verdict_and_reason(corpus, name):
  root, _, manifest, _ = corpus
  fault = FAULTS[name]
  report = json.loads((root / "data" / "qc.json").read_text())["recordings"]
  if fault.row == "metadata.csv":  # a rejected metadata row: find it by its reason
    rows = [r for r in report if r["recording_id"].startswith("metadata.csv:")
            and any(re.search(fault.pattern, x) for x in r["reasons"])]
    assert len(rows) == 1, [r["reasons"] for r in report if r["recording_id"].startswith("meta")]
    row = rows[0]
  else:
    rid = fault.row.format(rid=name) if fault.row else name
    rows = [r for r in report if r["recording_id"] == rid
            or (fault.row and r["recording_id"].startswith(rid))]
    assert rows, f"{rid} is not in the QC report"
    row = rows[-1]
  assert row["verdict"] == fault.verdict, row["reasons"]
  text = row["reasons"] if fault.verdict == "skip" else row["notes"]
  if fault.pattern == "^$":
    assert not [n for n in text if "metadata" in n], text
  else:
    assert any(re.search(fault.pattern, t) for t in text), text
  if fault.verdict == "skip" and name not in QC_VERDICTS:
    named = "metadata.csv:" if fault.row == "metadata.csv" else name
    assert any(named in t for t in row["reasons"]), "the reason names the file"
  assert (name in manifest["recordings"]) == fault.good


def test_every_file_is_accounted_for_and_counts_agree(corpus):
  root, _, manifest, _ = corpus
  report = json.loads((root / "data" / "qc.json").read_text())
  ids = {r["recording_id"] for r in report["recordings"]}
  for folder in ("edf", "annotations"):
    for p in (root / "raw" / folder).iterdir():
      assert p.stem in ids or f"{folder}/{p.name}" in ids, p  # used by a row, or a row itself
  with open(root / "data" / "qc.csv", newline="") as f:
    table = list(csv.DictReader(f))
  ok = sum(r["verdict"] == "ok" for r in table)
  assert len(table) == report["summary"]["recordings"] == manifest["qc_summary"]["rows"]
  assert ok == report["summary"]["ok"] == len(manifest["recordings"]) == manifest["qc_summary"]["ok"]
  assert len(table) - ok == report["summary"]["skipped"] == len(manifest["skipped"])
  unmatched = next(r for r in table if r["recording_id"] == "unmapped-labels")["unmatched_labels"]
  assert unmatched == "FOO | BAR"
  # Nothing was written outside the data directory, under any id.
  assert not list((root / "raw").rglob("*.array_record"))
  assert not (root / "escape.json").exists() and not (root.parent / "escape.json").exists()
  assert not list((root / "data" / STAGING).glob("*/*"))


def test_good_recordings_convert_byte_identically_beside_bad_ones(corpus):
  root, _, manifest, alone = corpus
  assert sorted(manifest["recordings"]) == sorted(alone["recordings"]) == sorted(_good_names())
  assert _shards(manifest) == _shards(alone) and _shards(alone)
  assert manifest["split_hash"] == alone["split_hash"]


def test_random_mix_converts_the_same_bytes(corpus, tmp_path):
  root, config, _, alone = corpus
  rng = random.Random(0)
  bad = [k for k in FAULTS if not FAULTS[k].good]
  mix = rng.sample(bad, 12) + [k for k in FAULTS if FAULTS[k].good]
  rng.shuffle(mix)
  build_cohort(tmp_path / "raw", mix)
  manifest = json.loads(prep.prepare(tmp_path / "raw", tmp_path / "data", config).read_text())
  assert _shards(manifest) == _shards(alone)


def test_resumed_run_writes_byte_identical_qc_files(corpus, tmp_path):
  root, config, manifest, _ = corpus
  shutil.copytree(root / "data", tmp_path / "data")
  staged = sorted((tmp_path / "data" / STAGING).glob("*.json"))
  for p in staged[::2]:  # as if killed half way
    p.unlink()
  resumed = json.loads(prep.prepare(root / "raw", tmp_path / "data", config).read_text())
  for name in ("qc.csv", "qc.json"):
    assert (tmp_path / "data" / name).read_bytes() == (root / "data" / name).read_bytes(), name
  assert _shards(resumed) == _shards(manifest)


def test_metadata_as_people_write_it(tmp_path):
  rows = [meta_row("r1", sex="1"), meta_row("r2", sex="2", age="61,5"), meta_row("r3", sex="F")]
  header = ";".join(COLUMNS).replace("subject_id", "Subject ID").replace("sex", "Gender")
  body = "\n".join(";".join(r[c] for c in COLUMNS) for r in rows)
  (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + f"{header}\r\n{body}\r\n".encode())
  metas, rejected, notes, file_notes = metadata.read_metadata(tmp_path / "excel.csv")
  assert [(m["recording_id"], m["subject_id"], m["sex"], m["age"]) for m in metas] == [
      ("r1", "subj-r1", 1, 50.0), ("r2", "subj-r2", 0, 61.5), ("r3", "subj-r3", 0, 50.0)]
  assert not rejected and not file_notes and not any(notes.values())
  (tmp_path / "utf16.csv").write_bytes(f"{header}\n{body}\n".encode("utf-16"))
  assert len(metadata.read_metadata(tmp_path / "utf16.csv")[0]) == 3
  (tmp_path / "latin1.csv").write_bytes("recording_id,subject_id,site\nr1,s1,Zürich\n".encode("latin-1"))
  metas, _, _, file_notes = metadata.read_metadata(tmp_path / "latin1.csv")
  assert metas[0]["site"] == "Zürich" and "latin1.csv is not UTF-8" in file_notes[0]
  (tmp_path / "nocol.csv").write_text("recording_id,patient\nr1,s1\n")
  with pytest.raises(ValueError, match=r"nocol\.csv: no 'subject_id' column"):
    metadata.read_metadata(tmp_path / "nocol.csv")
  with pytest.raises(ValueError, match=r"missing\.csv: not found"):
    metadata.read_metadata(tmp_path / "missing.csv")
  (tmp_path / "empty.csv").write_text("\n\n")
  with pytest.raises(ValueError, match=r"empty\.csv: empty"):
    metadata.read_metadata(tmp_path / "empty.csv")
  # MESA codes sex 0 female, 1 male (its channel map says so); NSRR's 2 is unknown there.
  from data_prep import channels  # pylint: disable=g-import-not-at-top
  codes = channels.load_map("mesa").sex_codes
  (tmp_path / "mesa.csv").write_text("recording_id,subject_id,sex\nr1,s1,0\nr2,s2,1\nr3,s3,2\n")
  metas, _, notes, _ = metadata.read_metadata(tmp_path / "mesa.csv", codes)
  assert [m["sex"] for m in metas] == [0, 1, None] and "not a known code" in notes["r3"][0]


def test_changed_config_reconverts_and_the_pipeline_refuses_mixed_records(corpus, tmp_path, capsys):
  root, config, _, alone = corpus
  shutil.copytree(root / "good-data", tmp_path / "data")
  changed = _config(config, segment_epochs=2)
  capsys.readouterr()
  manifest = json.loads(prep.prepare(root / "good", tmp_path / "data", changed).read_text())
  out = capsys.readouterr().out
  assert "the prep config changed" in out and "segment_epochs 4 -> 2" in out
  assert manifest["segment_epochs"] == 2 and manifest["prep_config"]["segment_epochs"] == 2
  assert manifest["prep_config_hash"] != alone["prep_config_hash"]
  split = next(k for k, v in manifest["splits"].items() if v["shards"])
  manifest["dir"] = str(tmp_path / "data")
  manifest_lib.verify_shards(manifest, split, "full")  # agrees with itself
  stale = json.loads(json.dumps(manifest))
  stale["segment_epochs"] = 4  # a manifest that does not describe these shards
  with pytest.raises(ValueError, match=r"records disagree with the manifest .*segment_epochs=4"):
    manifest_lib.verify_shards(stale, split, "size")
  stale = json.loads(json.dumps(manifest))
  stale["prep_config_hash"] = alone["prep_config_hash"]
  with pytest.raises(ValueError, match=r"records disagree with the manifest .*prep config"):
    manifest_lib.verify_shards(stale, split, "size")
  # Unchanged config, unchanged sources: nothing converted again.
  assert writer.finished(tmp_path / "data")
  capsys.readouterr()
  prep.prepare(root / "good", tmp_path / "data", changed)
  assert "the prep config changed" not in capsys.readouterr().out


@pytest.mark.parametrize("error,expected", [
    (TypeError("boom"), r"^edf/r1\.edf: unexpected TypeError while quality control and "
                        r"harmonisation: boom\. The file is malformed"),
    (MemoryError(), r"^edf/r1\.edf: out of memory while quality control and harmonisation"),
    (KeyError("x"), r"^edf/r1\.edf: unexpected KeyError while quality control")])
def test_any_exception_is_a_skip_naming_the_file(tmp_path, tiny_config, monkeypatch, error,
                                                 expected):
  raw = tmp_path / "raw"
  for d in ("edf", "annotations"):
    (raw / d).mkdir(parents=True)
  write_metadata(raw, good(raw, "r1", 0))
  metas, _, notes, _ = metadata.read_metadata(raw / "metadata.csv")

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(prep.harmonise, "harmonise", fail)
  stamp = {"source": [], "conversion_hash": "", "conversion": {}, "meta_notes": notes["r1"]}
  summary = prep._stage_recording(raw, tmp_path / "data", metas[0], _config(tiny_config.prep),
                                  stamp)
  assert summary["verdict"] == "skip" and re.search(expected, summary["reasons"][0])
  assert summary["qc"]["reasons"] == summary["reasons"]
  staged = json.loads((tmp_path / "data" / STAGING / "r1.json").read_text())
  assert staged["verdict"] == "skip"
  assert "Traceback" in staged["traceback"]  # for a bug report; not in the QC files
