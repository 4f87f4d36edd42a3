"""metadata.csv: one row per recording (recording_id, subject_id, site; optional age, sex, bmi,
ahi), read whatever its encoding (UTF-8 with or without BOM, UTF-16, Latin-1) and delimiter
(`,;\t|`); ids validated; implausible or unparseable values become missing with a note naming
the row and column; a missing required column is one error naming the file.
"""

import csv
import pathlib

import numpy as np

from data_prep import channels, qc


REQUIRED_COLUMNS = ("recording_id", "subject_id")
COLUMN_ALIASES = {"gender": "sex", "record_id": "recording_id", "subject": "subject_id"}
# Plausible ranges; a value outside becomes missing, with a note in the recording's QC row.
PLAUSIBLE = {"age": (0.0, 120.0, "years"), "bmi": (10.0, 100.0, "kg/m2"),
             "ahi": (0.0, 200.0, "events/h")}
SEX_WORDS = {"m": 1, "male": 1, "man": 1, "f": 0, "female": 0, "woman": 0}  # 1 male, 0 female
MISSING = {"", "na", "n/a", "nan", "none", "null", ".", "-", "?", "unknown", "u"}
MAX_ID_LENGTH = 200


def check_recording_id(rid: str) -> str | None:
  """Why `rid` cannot name files under the data directory, or None. Ids become file names."""
  if any(ord(c) < 32 or ord(c) == 127 for c in rid):
    return f"recording_id {rid!r} contains control characters"
  if "/" in rid or "\\" in rid:
    return f"recording_id {rid!r} contains a path separator"
  if ".." in rid or rid.startswith("."):
    return f"recording_id {rid!r} contains '..' or starts with '.'"
  if len(rid) > MAX_ID_LENGTH:
    return f"recording_id is {len(rid)} characters long (at most {MAX_ID_LENGTH})"
  return None


def _decode_text(path: pathlib.Path, data: bytes, notes: list[str]) -> str:
  """UTF-8 (with or without BOM) or UTF-16 with BOM; else Latin-1 with a note."""
  if data.startswith((b"\xff\xfe", b"\xfe\xff")):
    try:
      return data.decode("utf-16")
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: starts with a UTF-16 byte-order mark but is not UTF-16 ({e})"
                       ) from None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    notes.append(f"{path.name} is not UTF-8 (byte {data[e.start]:#04x} on line {line}); read as "
                 "Latin-1: check non-ASCII ids and sites, or save the file as UTF-8")
    return data.decode("latin-1")


def _number(value: str, column: str, notes: list[str]) -> float | None:
  text = (value or "").strip()
  if text.lower() in MISSING:
    return None
  try:
    x = float(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text)
  except ValueError:
    notes.append(f"metadata {column} {text[:40]!r} is not a number; set to missing")
    return None
  lo, hi, unit = PLAUSIBLE[column]
  if not (np.isfinite(x) and lo <= x <= hi):
    notes.append(f"metadata {column} {text[:40]} is implausible (expected {lo:g}-{hi:g} {unit}); "
                 "set to missing")
    return None
  return x


def _sex(value: str, codes: dict[str, int], notes: list[str]) -> int | None:
  text = (value or "").strip().lower()
  if text in MISSING:
    return None
  if text in SEX_WORDS:
    return SEX_WORDS[text]
  key = text[:-2] if text.endswith(".0") else text
  if key in codes:
    return codes[key]
  known = ", ".join(f"{k}={'male' if v else 'female'}" for k, v in sorted(codes.items()))
  notes.append(f"metadata sex {value.strip()[:40]!r} is not a known code (M/F, male/female, or "
               f"this cohort's numeric codes {known}); set to missing")
  return None


def read_metadata(path: pathlib.Path, sex_codes: dict[str, int] | None = None
                  ) -> tuple[list[dict], list[dict], dict[str, list[str]], list[str]]:
  """metadata.csv -> (recording metadata rows, QC rows for unusable lines, notes per recording,
  notes about the file itself).

  Accepts a UTF-8 BOM (Excel), UTF-16 with BOM, Latin-1 (with a note); comma, semicolon, tab or
  `|` delimiters (the most frequent in the header line); header names in any case, with spaces
  for underscores, and `gender` for `sex`. Raises ValueError naming the file when it cannot be
  read or lacks a required column. `sex_codes`: numeric sex codes of the cohort ("1" -> 1 male,
  "2" -> 0 female for NSRR); words M/F/male/female are always read.
  """
  path = pathlib.Path(path)
  codes = channels.SEX_CODES_NSRR if sex_codes is None else sex_codes
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise ValueError(f"{path}: not found; a cohort needs a metadata.csv with columns "
                     "recording_id, subject_id (and optionally site, age, sex, bmi, ahi)") from None
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e})") from None
  file_notes: list[str] = []
  text = _decode_text(path, data, file_notes)
  lines = text.splitlines()
  first = next((i for i, line in enumerate(lines) if line.strip()), None)
  if first is None:
    raise ValueError(f"{path}: empty; it needs a header line with recording_id and subject_id")
  delimiter = max(",;\t|", key=lines[first].count)
  table = list(csv.reader(lines[first:], delimiter=delimiter))
  names = ["_".join(c.strip().strip('"').lower().replace("-", " ").split()) for c in table[0]]
  names = [COLUMN_ALIASES.get(n, n) for n in names]
  for column in REQUIRED_COLUMNS:
    if column not in names:
      raise ValueError(f"{path}: no {column!r} column; the header line reads {table[0]} "
                       f"(split at {delimiter!r}); metadata.csv needs columns "
                       f"{', '.join(REQUIRED_COLUMNS)}")
  col = {n: names.index(n) for n in reversed(names)}  # first occurrence wins
  rows, rejected, notes, seen = [], [], {}, set()
  for line, cells in enumerate(table[1:], start=first + 2):
    if not any(c.strip() for c in cells):
      continue
    get = lambda name, cells=cells: cells[col[name]] if name in col and col[name] < len(cells) else ""
    rid, sid = get("recording_id").strip(), get("subject_id").strip()
    where = f"{path.name}:{line}"
    if not rid or not sid:
      missing = " and ".join(c for c, v in (("recording_id", rid), ("subject_id", sid)) if not v)
      rejected.append(qc.error_row(where, f"{where}: no {missing} on this line"))
      continue
    if problem := check_recording_id(rid):
      rejected.append(qc.error_row(where, f"{where}: {problem}; ids name files under the data "
                                          "directory: rename the recording's files and the row"))
      continue
    if rid in seen:
      rejected.append(qc.error_row(f"{rid}@line{line}",
                                   f"{where}: recording_id {rid} listed twice; the first row wins"))
      continue
    seen.add(rid)
    row_notes = []
    rows.append({
        "recording_id": rid, "subject_id": sid, "site": get("site").strip() or "unknown",
        "age": _number(get("age"), "age", row_notes),
        "sex": _sex(get("sex"), codes, row_notes),  # 1 male, 0 female, None missing
        "bmi": _number(get("bmi"), "bmi", row_notes),
        "ahi": _number(get("ahi"), "ahi", row_notes)})
    notes[rid] = row_notes
  return rows, rejected, notes, file_notes
