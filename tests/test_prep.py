"""data_prep end to end: bad input never crashes a run; a killed run resumes to the same bytes."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyedflib
import pyedflib.highlevel
import pytest

from data_prep import prep
from data_prep.writer import STAGING
from tests.conftest import REPO


def _copy_cohort(src, dst):
  shutil.copytree(src, dst)
  with open(dst / "metadata.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return rows


def _write_rows(dst, rows):
  with open(dst / "metadata.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _add(rows, template, **changes):
  rows.append({**template, **changes})


@pytest.mark.filterwarnings("ignore:phys_m")  # pyedflib, rewriting a flat channel at its range
def test_bad_input_corpus_is_reported_and_good_recordings_convert(prepared, tiny_config, tmp_path):
  raw = tmp_path / "raw"
  rows = _copy_cohort(prepared / "raw", raw)
  good = [r["recording_id"] for r in rows]
  edf_dir, ann_dir = raw / "edf", raw / "annotations"
  src = rows[0]
  blob = (edf_dir / f"{src['recording_id']}.edf").read_bytes()
  # Truncated file, corrupt header, missing annotations, unmapped channels, a malformed CSV row,
  # and the first night again under another recording and subject id.
  (edf_dir / "bad-trunc.edf").write_bytes(blob[:len(blob) // 3])
  (edf_dir / "bad-header.edf").write_bytes(b"garbage!" * 32 + blob[256:])
  shutil.copy(edf_dir / f"{src['recording_id']}.edf", edf_dir / "bad-noann.edf")
  shutil.copy(edf_dir / f"{src['recording_id']}.edf", edf_dir / "dup-0001.edf")
  shutil.copy(ann_dir / f"{src['recording_id']}.xml", ann_dir / "dup-0001.xml")
  for rid in ("bad-trunc", "bad-header", "bad-unmapped"):
    shutil.copy(ann_dir / f"{src['recording_id']}.xml", ann_dir / f"{rid}.xml")
  w = pyedflib.EdfWriter(str(edf_dir / "bad-unmapped.edf"), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
  w.setSignalHeaders([{"label": label, "dimension": "uV", "sample_frequency": 100,
                       "physical_min": -100, "physical_max": 100, "digital_min": -32768,
                       "digital_max": 32767, "transducer": "", "prefilter": ""}
                      for label in ("FOO", "BAR")])
  w.writeSamples([np.zeros(100 * 600), np.zeros(100 * 600)])
  w.close()
  # Converted despite problems: annotations running past the end, a flat (dead) EEG channel.
  overrun = rows[1]["recording_id"]
  xml = (ann_dir / f"{overrun}.xml").read_text()
  (ann_dir / f"{overrun}.xml").write_text(xml.replace("</ScoredEvents>", (
      "<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 2 sleep|2"
      "</EventConcept><Start>3600.0</Start><Duration>90.0</Duration></ScoredEvent>"
      "</ScoredEvents>")))
  signals, headers, header = pyedflib.highlevel.read_edf(str(edf_dir / f"{rows[2]['recording_id']}.edf"))
  eeg = next(i for i, h in enumerate(headers) if h["label"] in ("EEG", "EEG3"))
  signals[eeg] = np.zeros_like(signals[eeg])
  pyedflib.highlevel.write_edf(str(edf_dir / "odd-flat.edf"), signals, headers, header)
  shutil.copy(ann_dir / f"{rows[2]['recording_id']}.xml", ann_dir / "odd-flat.xml")
  _add(rows, src, recording_id="odd-flat", subject_id="sub-odd-flat")
  good.append("odd-flat")
  for rid in ("bad-trunc", "bad-header", "bad-noann", "bad-unmapped", "bad-noedf"):
    _add(rows, src, recording_id=rid, subject_id=f"sub-{rid}")
  _add(rows, src, recording_id="dup-0001", subject_id="sub-9999")
  _add(rows, src, recording_id="no-subject", subject_id="")
  _write_rows(raw, rows)

  manifest = json.loads(prep.prepare(raw, tmp_path / "data", tiny_config.prep).read_text())
  report = json.loads((tmp_path / "data" / "qc.json").read_text())
  qc = {r["recording_id"]: r for r in report["recordings"]}
  assert report["summary"] == {"recordings": len(qc), "ok": len(good), "skipped": len(qc) - len(good)}
  assert set(manifest["recordings"]) == set(good)  # every good recording, and only those
  for rid in ("bad-trunc", "bad-header", "bad-noann", "bad-unmapped", "bad-noedf", "dup-0001"):
    assert qc[rid]["verdict"] == "skip" and qc[rid]["reasons"], rid
  assert "duplicate of" in qc["dup-0001"]["reasons"][0]
  assert any("outside the recording" in n for n in qc[overrun]["notes"])
  flat = manifest["recordings"]["odd-flat"]["present"]["eeg"]
  assert flat.count(False) == 1 and qc["odd-flat"]["channels"]["eeg"]  # one EEG channel masked
  assert "bad-trunc" in qc["bad-trunc"]["reasons"][0]  # reasons name the file
  assert any("no subject_id on this line" in " ".join(r["reasons"]) for r in qc.values())
  with open(tmp_path / "data" / "qc.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == len(qc)


def _run_prep(raw, out):
  code = ("import sys; from sleepjax.cli import load_config; from data_prep import prep; "
          f"c = load_config('{REPO}/configs/smoke.py:tiny').prep; c.workers = 1; "
          "prep.prepare(sys.argv[1], sys.argv[2], c)")
  # Own process group: the kill below takes the worker processes too, as a scheduler would.
  return subprocess.Popen([sys.executable, "-c", code, str(raw), str(out)], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)


def test_killed_run_resumes_to_identical_shards(prepared, tmp_path):
  """Killed mid-run and rerun, prep writes the shards the shared cohort's uninterrupted prep
  (tests/conftest.py: the same raw data and config, two workers instead of one) wrote."""
  raw = prepared / "raw"
  proc = _run_prep(raw, tmp_path / "killed")
  staging = tmp_path / "killed" / STAGING
  deadline = time.time() + 300
  while not (staging.exists() and list(staging.glob("*.json"))) and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  done = len(list(staging.glob("*.json")))
  assert 0 < done < 6, "the kill should land mid-run"
  assert not (tmp_path / "killed" / "manifest.json").exists()
  assert _run_prep(raw, tmp_path / "killed").wait(timeout=300) == 0
  whole = json.loads((prepared / "data" / "manifest.json").read_text())
  resumed = json.loads((tmp_path / "killed" / "manifest.json").read_text())
  sums = lambda m: {s["path"]: s["sha256"] for v in m["splits"].values() for s in v["shards"]}
  assert sums(resumed) == sums(whole) and sums(whole)
  assert not list((tmp_path / "killed").glob("*.tmp")) and not list(staging.glob("*.tmp"))
