"""Sleep stages and scored events -> per-epoch stages and per-second event rasters.

Readers (all return `(stages int8 [n_epochs], events list[Event])`; -1 = unknown/unscored):

* `read_xml`: NSRR XML (`ScoredEvents`; stage concepts with a code, "Stage 2 sleep|2", or words
  only, "N2") and Compumedics Profusion XML (`CMPStudyConfig`: one `SleepStage` per epoch, coded
  0 W, 1-4 R&K stages (4 -> N3), 5 REM, anything else unscored; `ScoredEvent` with `Name`).
* `read_edf_annotations`: EDF+ annotation channels, including Sleep-EDF-style hypnogram files
  ("Sleep stage W/1/2/3/4/R/?", "Movement time").
* `read_csv_annotations`: CSV/TSV tables, see its docstring for the accepted headers.
* `read_annotations`: picks one of the above by extension (.xml; .edf/.bdf/.rec; .csv/.tsv/.txt)
  or, for any other extension, by content.

Stage vocabulary (`stage_code`): W/Wake -> 0; 1/N1/S1 -> 1; 2/N2/S2 -> 2; 3/4/N3/N4/S3/S4 -> 3
(R&K S3+S4 merge into AASM N3); R/REM/5 -> 4; "?", movement time, unscored, artefact -> -1.
Numeric codes follow NSRR (0 W, 1 N1, 2 N2, 3 N3, 4 R&K S4 -> N3, 5 REM).
A stage annotation covers the epochs whose centre lies inside [onset, onset + duration); a stage
annotation without a duration covers one epoch. Event kinds come from the label text (apnea,
hypopnea, desaturation, arousal, limb movement); other labels are ignored.

Every reader uses this one vocabulary. A stage annotation whose label is not in it leaves its epochs
unscored and is counted in one message ("N stage annotations with unknown labels left unscored").
An onset or duration that is not a finite number, or beyond a week, drops that element with a
message naming it (line, ScoredEvent index or SleepStage index).

Annotations outside the recording (`n_epochs * 30` s) are clipped, never silently: a stage or event
that starts at or after the end, or before 0, is dropped, and one that runs past the end is cut.
Each clip is reported as one message naming the file; pass `issues=[]` to collect the messages,
otherwise each is emitted as an `AnnotationWarning` (a UserWarning). Unreadable input raises
ValueError naming the file and the problem.
"""

import csv
import dataclasses
import datetime
import io
import os
import re
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from data_prep import edf
from sleepjax.modalities import EPOCH_SECONDS, EVENTS, UNKNOWN_STAGE

# NSRR stage concepts ("Stage 4 sleep|4" is R&K S4, merged into N3 as AASM does).
NSRR_STAGES = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 3, "5": 4}
_STAGE_WORDS = {
    "w": 0, "wake": 0, "awake": 0, "0": 0,
    "1": 1, "n1": 1, "s1": 1, "nrem1": 1,
    "2": 2, "n2": 2, "s2": 2, "nrem2": 2,
    "3": 3, "4": 3, "n3": 3, "n4": 3, "s3": 3, "s4": 3, "nrem3": 3, "nrem4": 3, "sws": 3,
    "r": 4, "rem": 4, "5": 4,
    "?": UNKNOWN_STAGE, "movementtime": UNKNOWN_STAGE, "movement": UNKNOWN_STAGE,
    "mt": UNKNOWN_STAGE, "unscored": UNKNOWN_STAGE, "unknown": UNKNOWN_STAGE,
    "artifact": UNKNOWN_STAGE, "artefact": UNKNOWN_STAGE, "-1": UNKNOWN_STAGE,
    "9": UNKNOWN_STAGE,
}


MAX_TIME_S = 7 * 24 * 3600.0  # an onset or duration beyond a week is not a time in one night


class AnnotationWarning(UserWarning):
  """An annotation was clipped to the recording (see the module docstring)."""


@dataclasses.dataclass
class Event:
  kind: str  # one of modalities.EVENTS
  onset_s: float
  duration_s: float


def stage_code(label: str) -> int | None:
  """Stage code of a stage label (-1 for unknown/movement), None if `label` is not a stage.

  NSRR concepts "Stage 2 sleep|2" are read by their code (0-5, see NSRR_STAGES), else by their
  words, as are bare words ("N2", "Sleep stage 2", "REM sleep", "Wake").
  """
  text = label.strip().lower()
  if "|" in text:  # NSRR concept "Stage 2 sleep|2"
    words, _, code = text.rpartition("|")
    if code.strip() in NSRR_STAGES:
      return NSRR_STAGES[code.strip()]
    text = words if _words(words) in _STAGE_WORDS else code
  return _STAGE_WORDS.get(_words(text))


def _words(text: str) -> str:
  return re.sub(r"\b(sleep|stage)\b|[\s_]", "", text.strip().lower())


def _event_kind(event_type: str, concept: str) -> str | None:
  text = f"{event_type} {concept}".lower()
  if "hypopnea" in text or "hypopnoea" in text:
    return "hypopnea"
  if "apnea" in text or "apnoea" in text:
    return "apnea"
  if "desaturation" in text or "desat" in text:
    return "desaturation"
  if "arousal" in text:
    return "arousal"
  if "limb" in text or "plm" in text or "leg movement" in text:
    return "limb_movement"
  return None


class _Builder:
  """Collects stages and events for `n_epochs`, clipping (and reporting) what lies outside."""

  def __init__(self, path, n_epochs: int, issues: list[str] | None):
    self.path, self.n_epochs, self.issues = os.fspath(path), n_epochs, issues
    self.end = float(n_epochs * EPOCH_SECONDS)
    self.stages = np.full(n_epochs, UNKNOWN_STAGE, np.int8)
    self.events: list[Event] = []
    self.n_stages = 0  # stage annotations seen (any label)
    self.unknown: dict[str, int] = {}  # stage labels outside the vocabulary -> count

  def plausible(self, onset, duration, label: str, where: str) -> bool:
    """False (and reported) for a non-finite or absurd onset or duration."""
    for what, value in (("onset", onset), ("duration", duration)):
      if value is None:
        continue
      if not np.isfinite(value) or abs(value) > MAX_TIME_S:
        self.report(f"{where}{label!r}: {what} {value!r} s is not a plausible time; dropped")
        return False
    return True

  def unknown_stage(self, label: str):
    self.unknown[label] = self.unknown.get(label, 0) + 1

  def finish(self):
    """Reports the unknown stage labels (their epochs stay unscored)."""
    if self.unknown:
      listed = ", ".join(f"{k!r} x{v}" for k, v in sorted(self.unknown.items()))
      self.report(f"{sum(self.unknown.values())} stage annotations with unknown labels left "
                  f"unscored ({listed})")

  def report(self, message: str):
    message = f"{self.path}: {message}"
    if self.issues is not None:
      self.issues.append(message)
    else:
      warnings.warn(message, AnnotationWarning, stacklevel=4)

  def stage(self, code: int, onset: float, duration: float | None, label: str, where: str = ""):
    self.n_stages += 1
    if not self.plausible(onset, duration, label, where):
      return
    if not duration or duration <= 0:
      duration = EPOCH_SECONDS
    stop = onset + duration
    if onset >= self.end or stop <= 0:
      self.report(f"stage {label!r} at {onset:g}-{stop:g} s lies outside the recording "
                  f"(0-{self.end:g} s); dropped")
      return
    if stop > self.end or onset < 0:
      self.report(f"stage {label!r} at {onset:g}-{stop:g} s overruns the recording "
                  f"(0-{self.end:g} s); clipped")
    # Epoch k (centre 30k + 15) is covered when onset <= centre < stop.
    first = max(int(np.ceil((onset - EPOCH_SECONDS / 2) / EPOCH_SECONDS)), 0)
    last = min(int(np.ceil((stop - EPOCH_SECONDS / 2) / EPOCH_SECONDS)), self.n_epochs)
    self.stages[first:last] = code

  def event(self, kind: str, onset: float, duration: float | None, label: str, where: str = ""):
    if not self.plausible(onset, duration, label, where):
      return
    duration = max(duration or 0.0, 0.0)
    stop = onset + duration
    if onset >= self.end or stop < 0 or (stop == 0 and onset < 0):
      self.report(f"event {label!r} at {onset:g}-{stop:g} s lies outside the recording "
                  f"(0-{self.end:g} s); dropped")
      return
    if stop > self.end or onset < 0:
      self.report(f"event {label!r} at {onset:g}-{stop:g} s overruns the recording "
                  f"(0-{self.end:g} s); clipped")
      onset, stop = max(onset, 0.0), min(stop, self.end)
    self.events.append(Event(kind, onset, stop - onset))

  def labelled(self, onset: float, duration: float | None, label: str, where: str = ""):
    """Dispatches a free-text label: stage, event, or ignored."""
    code = stage_code(label)
    if code is not None:
      self.stage(code, onset, duration, label, where)
    elif kind := _event_kind(label, ""):
      self.event(kind, onset, duration, label, where)
    elif re.match(r"\s*(sleep\s*)?stage\b", label, re.I):
      self.n_stages += 1
      self.unknown_stage(label)

  def result(self) -> tuple[np.ndarray, list[Event]]:
    self.finish()
    return self.stages, self.events


def _float(path, text, what) -> float:
  try:
    return float(text)
  except (TypeError, ValueError):
    raise ValueError(f"{path}: {what} {text!r} is not a number") from None


def _parse_xml(path) -> ET.Element:
  try:
    return ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{path}: malformed annotation XML ({e})") from e
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e})") from e


def read_xml(path: str | os.PathLike, n_epochs: int, *,
             issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """NSRR XML (<PSGAnnotation>, ScoredEvent with EventType/EventConcept) or Compumedics Profusion
  XML (<CMPStudyConfig>, SleepStages + ScoredEvent with Name), told apart by their content."""
  root = _parse_xml(path)
  if root.find(".//SleepStages") is not None or root.tag == "CMPStudyConfig":
    return _read_profusion(path, root, n_epochs, issues)
  if root.find(".//ScoredEvent") is None:
    raise ValueError(f"{path}: neither NSRR XML (ScoredEvent elements) nor Compumedics Profusion "
                     f"XML (SleepStages); root element <{root.tag}> has no annotations this "
                     "reader knows")
  return _read_nsrr(path, root, n_epochs, issues)


def read_nsrr_xml(path: str | os.PathLike, n_epochs: int, *,
                  issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """Returns stages int8 [n_epochs] (-1 where unscored) and the scored events."""
  return _read_nsrr(path, _parse_xml(path), n_epochs, issues)


def _xml_number(path, out: _Builder, element, tag: str, where: str) -> float | None:
  text = element.findtext(tag)
  if text is None or not text.strip():
    return 0.0
  try:
    return float(text)
  except ValueError:
    out.report(f"{where}: {tag} {text.strip()[:40]!r} is not a number; dropped")
    return None


def _read_nsrr(path, root, n_epochs, issues) -> tuple[np.ndarray, list[Event]]:
  out = _Builder(path, n_epochs, issues)
  for i, ev in enumerate(root.iter("ScoredEvent")):
    event_type = ev.findtext("EventType") or ""
    concept = (ev.findtext("EventConcept") or "").strip()
    where = f"ScoredEvent {i} ({concept[:60]!r})"
    start = _xml_number(path, out, ev, "Start", where)
    duration = _xml_number(path, out, ev, "Duration", where)
    if start is None or duration is None:
      continue
    if event_type.startswith("Stages"):
      code = stage_code(concept)
      if code is None:
        out.n_stages += 1
        out.unknown_stage(concept)
        continue
      out.stage(code, start, duration, concept, f"ScoredEvent {i} ")
    elif kind := _event_kind(event_type, concept):
      out.event(kind, start, duration, concept, f"ScoredEvent {i} ")
  return out.result()


PROFUSION_STAGES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4}  # 0 W, 1-4 R&K (4 -> N3), 5 REM; else ?


def _read_profusion(path, root, n_epochs, issues) -> tuple[np.ndarray, list[Event]]:
  """Compumedics Profusion: one <SleepStage> integer per epoch of <EpochLength> s."""
  out = _Builder(path, n_epochs, issues)
  epoch_length = _xml_number(path, out, root, "EpochLength", "EpochLength")
  if not epoch_length or not np.isfinite(epoch_length) or not 1 <= epoch_length <= 300:
    out.report(f"EpochLength {root.findtext('EpochLength')!r} is not usable; assuming 30 s")
    epoch_length = float(EPOCH_SECONDS)
  stages = root.find(".//SleepStages")
  for k, el in enumerate(stages.iter("SleepStage") if stages is not None else ()):
    text = (el.text or "").strip()
    out.n_stages += 1
    try:
      code = PROFUSION_STAGES.get(int(text), UNKNOWN_STAGE)
    except ValueError:
      out.unknown_stage(text)
      continue
    out.stage(code, k * epoch_length, epoch_length, f"SleepStage {text}", f"SleepStage {k} ")
  for i, ev in enumerate(root.iter("ScoredEvent")):
    name = (ev.findtext("Name") or ev.findtext("EventConcept") or "").strip()
    where = f"ScoredEvent {i} ({name[:60]!r})"
    start = _xml_number(path, out, ev, "Start", where)
    duration = _xml_number(path, out, ev, "Duration", where)
    if start is not None and duration is not None and (kind := _event_kind(name, "")):
      out.event(kind, start, duration, name, f"ScoredEvent {i} ")
  return out.result()


def read_edf_annotations(path: str | os.PathLike, n_epochs: int, *,
                         recording_start: datetime.datetime | None = None,
                         issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """Stages and events from the annotation channel(s) of an EDF+/BDF+ file or hypnogram.

  Onsets count from the annotation file's first sample; with `recording_start` (the wall-clock
  start of the signals) they are shifted by the difference of the two start times, for hypnogram
  files that start at another time than the PSG they score.
  """
  rec = edf.read_edf(path, labels=())
  shift = 0.0
  if recording_start is not None and rec.start is not None:
    shift = (rec.start - recording_start).total_seconds()
  return from_edf_annotations(path, rec.annotations, n_epochs, shift=shift, issues=issues)


def from_edf_annotations(path, notes: list[edf.Annotation], n_epochs: int, *, shift: float = 0.0,
                         issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """Stages and events from EDF+ annotations already read (e.g. a PSG file's own)."""
  out = _Builder(path, n_epochs, issues)
  for a in notes:
    out.labelled(a.onset_s + shift, a.duration_s, a.text)
  return out.result()


def has_stages(notes: list[edf.Annotation]) -> bool:
  return any(stage_code(a.text) is not None for a in notes)


_ONSET = ("onset", "onset_s", "start", "start_s", "start_time", "starttime", "time", "begin")
_END = ("end", "end_s", "stop", "offset", "end_time")
_DURATION = ("duration", "duration_s", "dur")
_LABEL = ("label", "description", "annotation", "event", "event_type", "type", "name",
          "stage", "sleep_stage", "hypnogram")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d*)?))?$")


def _onset_seconds(path, text: str, recording_start, line: int) -> float:
  """Seconds (a number), clock time (HH:MM[:SS]) or ISO date-time -> seconds from the start."""
  text = text.strip()
  try:
    return float(text)
  except ValueError:
    pass
  where = f"line {line}: onset {text!r}"
  if m := _CLOCK.match(text):
    if recording_start is None:
      raise ValueError(f"{path}: {where} is a clock time; pass recording_start")
    h, mnt, s = int(m[1]), int(m[2]), float(m[3] or 0)
    t = recording_start.replace(hour=h, minute=mnt, second=0, microsecond=0)
    t += datetime.timedelta(seconds=s)
    if t < recording_start - datetime.timedelta(hours=12):  # past midnight
      t += datetime.timedelta(days=1)
    return (t - recording_start).total_seconds()
  try:
    t = datetime.datetime.fromisoformat(text)
  except ValueError:
    raise ValueError(f"{path}: {where} is neither seconds, HH:MM:SS nor ISO 8601") from None
  if recording_start is None:
    raise ValueError(f"{path}: {where} is a date-time; pass recording_start")
  try:
    return (t - recording_start).total_seconds()
  except TypeError:  # one of the two carries a time zone, the other not
    raise ValueError(f"{path}: {where} and recording_start {recording_start} cannot be "
                     "compared (time zone on one side only)") from None


def read_csv_annotations(path: str | os.PathLike, n_epochs: int, *,
                         recording_start: datetime.datetime | None = None,
                         issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """Stages and events from a delimited table (comma, semicolon or tab; header row required).

  Headers are matched case-insensitively, spaces read as underscores, first match wins:
    onset:    onset, onset_s, start, start_s, start_time, starttime, time, begin
    end:      end, end_s, stop, offset, end_time (used when there is no duration column)
    duration: duration, duration_s, dur
    label:    label, description, annotation, event, event_type, type, name, stage, sleep_stage,
              hypnogram
  Onsets are seconds from the recording start, clock times HH:MM[:SS[.f]] or ISO 8601 date-times
  (the last two need `recording_start`; clock times before it roll over midnight). Without an onset
  column each row is one consecutive 30-s epoch (a hypnogram listing). Labels are stages or events
  as in the module docstring; rows with other labels are ignored.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e})") from e
  note = None
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    if b"\x00" in data:
      raise ValueError(f"{path}: not a text table (binary data, byte {e.start})") from None
    text = data.decode("latin-1")
    note = f"not UTF-8 (byte {data[e.start]:#04x}); read as Latin-1"
  first_line = text.split("\n", 1)[0]
  delimiter = max(",;\t", key=first_line.count)
  rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
  if not rows or not any(cell.strip() for cell in rows[0]):
    raise ValueError(f"{path}: empty annotation table")
  names = ["_".join(cell.strip().lower().split()) for cell in rows[0]]

  def find(options):
    return next((names.index(o) for o in options if o in names), None)

  onset_col, end_col, dur_col, label_col = find(_ONSET), find(_END), find(_DURATION), find(_LABEL)
  if label_col is None:
    raise ValueError(f"{path}: no label column; header {rows[0]} has none of {list(_LABEL)}")
  out = _Builder(path, n_epochs, issues)
  if note:
    out.report(note)
  for line, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    if len(row) < len(names):
      raise ValueError(f"{path}: line {line} has {len(row)} fields, the header {len(names)}")
    label = row[label_col].strip()
    if onset_col is None:
      onset, duration = (line - 2) * EPOCH_SECONDS, float(EPOCH_SECONDS)
    else:
      onset = _onset_seconds(path, row[onset_col], recording_start, line)
      duration = None
      if dur_col is not None and row[dur_col].strip():
        duration = _float(path, row[dur_col], f"line {line}: duration")
      elif end_col is not None and row[end_col].strip():
        duration = _onset_seconds(path, row[end_col], recording_start, line) - onset
    out.labelled(onset, duration, label, f"line {line} ")
  return out.result()


def read_annotations(path: str | os.PathLike, n_epochs: int, *,
                     recording_start: datetime.datetime | None = None,
                     issues: list[str] | None = None) -> tuple[np.ndarray, list[Event]]:
  """Reads NSRR XML, EDF+ annotations/hypnograms or CSV, chosen by extension, else by content."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  kind = {".xml": "xml", ".edf": "edf", ".bdf": "edf", ".rec": "edf",
          ".csv": "csv", ".tsv": "csv", ".txt": "csv"}.get(ext)
  if kind is None:
    try:
      with open(path, "rb") as f:
        head = f.read(64)
    except OSError as e:
      raise ValueError(f"{path}: cannot read ({e})") from e
    if head[:8] == b"\xffBIOSEMI" or (head[:1] == b"0" and head[1:8].strip() == b""):
      kind = "edf"
    elif head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
      kind = "xml"
    else:
      kind = "csv"
  if kind == "xml":
    return read_xml(path, n_epochs, issues=issues)
  if kind == "edf":
    return read_edf_annotations(path, n_epochs, recording_start=recording_start, issues=issues)
  return read_csv_annotations(path, n_epochs, recording_start=recording_start, issues=issues)


def event_raster(events: list[Event], n_epochs: int) -> np.ndarray:
  """Per-second bitmask uint8 [n_epochs, 30]; bit k set while an event of kind EVENTS[k] is on."""
  raster = np.zeros(n_epochs * EPOCH_SECONDS, np.uint8)
  for ev in events:
    lo = max(int(np.floor(ev.onset_s)), 0)
    hi = min(int(np.ceil(ev.onset_s + ev.duration_s)), raster.size)
    raster[lo:hi] |= np.uint8(1 << EVENTS.index(ev.kind))
  return raster.reshape(n_epochs, EPOCH_SECONDS)
