"""EDF/EDF+/EDF+D/BDF readers and annotation readers (NSRR XML is in test_annotations.py).

Test files are written with pyedflib into tmp_path; EDF+D files are made from pyedflib's EDF+C
output by rewriting the header's reserved field and each record's time-keeping annotation.
Real recordings shipped by PyPI packages are read at the end (skipped when a package is absent).
"""

import datetime
import importlib.util
import pathlib
import warnings

import numpy as np
import pyedflib
import pytest

from data_prep import annotations, channels, edf
from sleepjax.modalities import EVENTS

START = datetime.datetime(2021, 3, 4, 22, 30, 0)


def _header(label, rate, unit="uV", lo=-500.0, hi=500.0, bdf=False):
  dmax = 8388607 if bdf else 32767
  return {"label": label, "dimension": unit, "sample_frequency": rate, "physical_min": lo,
          "physical_max": hi, "digital_min": -dmax - 1, "digital_max": dmax, "transducer": "",
          "prefilter": ""}


def _write(path, headers, data, *, bdf=False, notes=(), start=START):
  kind = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
  w = pyedflib.EdfWriter(str(path), len(headers), file_type=kind)
  if headers:
    w.setSignalHeaders(headers)
  w.setStartdatetime(start)
  if data:
    w.writeSamples(data)
  for onset, duration, text in notes:
    w.writeAnnotation(onset, duration, text)
  w.close()
  return path


def _psg(path, seconds=4, bdf=False, notes=((1.5, 2, "Obstructive Apnea"),)):
  """EEG 100 Hz (a ramp, so misplaced records show) and SpO2 1 Hz, 1-s data records."""
  eeg = (np.arange(seconds * 100) % 250 - 125) * 0.8
  spo2 = 90.0 + np.arange(seconds)
  _write(path, [_header("EEG", 100, bdf=bdf), _header("SpO2", 1, "%", 0, 100, bdf=bdf)],
         [eeg, spo2], bdf=bdf, notes=notes)
  return eeg, spo2


def _retime(src, dst, onsets, reserved=None):
  """Copies src with each record's time-keeping TAL set to `onsets` (and the reserved field)."""
  hdr = edf.read_header(src)
  raw = bytearray(pathlib.Path(src).read_bytes())
  if reserved:
    raw[192:192 + len(reserved)] = reserved.encode()
  ann = next(i for i, s in enumerate(hdr.signals) if s.is_annotation)
  offset = sum(s.samples_per_record for s in hdr.signals[:ann]) * hdr.bytes_per_sample
  width = hdr.signals[ann].samples_per_record * hdr.bytes_per_sample
  assert len(onsets) == hdr.n_records
  for r, onset in enumerate(onsets):
    lo = hdr.header_bytes + r * hdr.record_bytes + offset
    old = bytes(raw[lo:lo + width])
    rest = old[old.index(b"\x14\x14\x00") + 3:]
    raw[lo:lo + width] = (f"+{onset:g}".encode() + b"\x14\x14\x00" + rest)[:width].ljust(width, b"\0")
  pathlib.Path(dst).write_bytes(bytes(raw))
  return dst


# --------------------------------------------------------------------------- signals


def test_edf_plus_round_trip_with_annotations(tmp_path):
  eeg, spo2 = _psg(tmp_path / "a.edf")
  rec = edf.read_edf(tmp_path / "a.edf")
  assert rec.file_type == "EDF+C" and rec.duration_s == 4 and rec.start == START
  assert [(s.label, s.rate, s.unit) for s in rec.signals] == [("EEG", 100, "uV"), ("SpO2", 1, "%")]
  np.testing.assert_allclose(rec.signals[0].data, eeg, atol=0.02)  # 1000 uV / 65535 steps
  np.testing.assert_allclose(rec.signals[1].data, spo2, atol=0.002)
  assert [(a.onset_s, a.duration_s, a.text) for a in rec.annotations] == [
      (1.5, 2.0, "Obstructive Apnea")]
  assert not rec.gaps and not rec.warnings


def test_bdf_keeps_24_bit_resolution(tmp_path):
  t = np.arange(300) / 100
  x = 3.0 * np.sin(2 * np.pi * 5 * t)  # 3 uV in a +-100 mV range: below one 16-bit step (3 uV)
  _write(tmp_path / "a.bdf", [_header("EEG", 100, lo=-99999, hi=99999, bdf=True)], [x], bdf=True)
  rec = edf.read_edf(tmp_path / "a.bdf")
  assert rec.file_type == "BDF+C"
  np.testing.assert_allclose(rec.signals[0].data, x, atol=0.02)
  # The numpy decoder (used for BDF+D) sign-extends 24-bit samples the same way.
  fast = edf.read_edf(tmp_path / "a.bdf", decoder="numpy")
  np.testing.assert_allclose(fast.signals[0].data, rec.signals[0].data, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("bdf", [False, True], ids=["edf", "bdf"])
def test_discontinuous_records_are_placed_at_their_onsets(tmp_path, bdf):
  ext = "bdf" if bdf else "edf"
  eeg, spo2 = _psg(tmp_path / f"c.{ext}", bdf=bdf)
  path = _retime(tmp_path / f"c.{ext}", tmp_path / f"d.{ext}", [0, 1, 5, 6],
                 reserved="BDF+D" if bdf else "EDF+D")
  rec = edf.read_edf(path)
  assert rec.file_type == ("BDF+D" if bdf else "EDF+D")
  assert rec.duration_s == 7 and rec.gaps == [(2.0, 5.0)]
  x = rec.signals[0].data
  assert x.shape == (700,) and np.isnan(x[200:500]).all() and not np.isnan(x[:200]).any()
  np.testing.assert_allclose(x[:200], eeg[:200], atol=0.02)
  np.testing.assert_allclose(x[500:], eeg[200:], atol=0.02)
  np.testing.assert_allclose(rec.signals[1].data[[0, 1, 5, 6]], spo2, atol=0.002)
  assert np.isnan(rec.signals[1].data[2:5]).all()
  assert [(a.onset_s, a.text) for a in rec.annotations] == [(1.5, "Obstructive Apnea")]
  mne = pytest.importorskip("mne")  # independent decoder: reads the records back to back
  raw = mne.io.read_raw(path, preload=True, verbose="error")
  np.testing.assert_allclose(x[~np.isnan(x)], raw.get_data(picks=["EEG"])[0] * 1e6, atol=0.02)


def test_edf_plus_c_with_broken_time_keeping_is_placed_with_a_warning(tmp_path):
  _psg(tmp_path / "c.edf")
  rec = edf.read_edf(_retime(tmp_path / "c.edf", tmp_path / "x.edf", [0, 1, 2, 4]))
  assert rec.gaps == [(3.0, 4.0)] and rec.duration_s == 5
  assert any("not contiguous" in w for w in rec.warnings)


def test_overlapping_records_raise(tmp_path):
  _psg(tmp_path / "c.edf")
  path = _retime(tmp_path / "c.edf", tmp_path / "o.edf", [0, 1, 1.5, 3], reserved="EDF+D")
  with pytest.raises(ValueError, match=r"o\.edf: data record 2 starts at 1\.5 s"):
    edf.read_edf(path)


def test_label_subset_and_header_only(tmp_path):
  _psg(tmp_path / "a.edf")
  assert [s.label for s in edf.read_edf(tmp_path / "a.edf", labels={"SpO2"}).signals] == ["SpO2"]
  rec = edf.read_edf(tmp_path / "a.edf", labels=())
  assert rec.signals == [] and rec.annotations[0].text == "Obstructive Apnea"


def _set(offset, value):
  def mutate(raw):
    raw[offset:offset + len(value)] = value
    return raw
  return mutate


BAD = {
    "too_short": (lambda raw: raw[:100], r"too short for an EDF/BDF header"),
    "version": (_set(0, b"XYZ     "), r"not an EDF/BDF file"),
    "n_signals": (_set(252, b"ab  "), r"number of signals"),
    "header_size": (_set(184, b"9999    "), r"header size 9999"),
    "n_records": (_set(236, b"four    "), r"number of data records 'four'"),
    "duration": (_set(244, b"x       "), r"data record duration 'x'"),
    "digital_range": (_set(256 + 3 * 120, b"40000   "), r"digital range .* outside EDF"),
    "physical_number": (_set(256 + 3 * 104, b"abc     "), r"physical minimum of 'EEG'"),
    "truncated": (lambda raw: raw[:-150], r"truncated: header declares 4 data records"),
    "truncated_header": (lambda raw: raw[:300], r"truncated inside the header"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_value_error_naming_file_and_problem(tmp_path, case):
  _psg(tmp_path / "good.edf")
  mutate, message = BAD[case]
  path = tmp_path / f"{case}.edf"
  path.write_bytes(bytes(mutate(bytearray((tmp_path / "good.edf").read_bytes()))))
  with pytest.raises(ValueError, match=rf"{case}\.edf: .*{message}"):
    edf.read_edf(path)


def test_truncated_file_salvage_and_unknown_record_count(tmp_path):
  eeg, _ = _psg(tmp_path / "good.edf")
  raw = (tmp_path / "good.edf").read_bytes()
  (tmp_path / "short.edf").write_bytes(raw[:-150])
  rec = edf.read_edf(tmp_path / "short.edf", truncated="salvage")
  assert rec.duration_s == 3 and "truncated" in rec.warnings[0]
  np.testing.assert_allclose(rec.signals[0].data, eeg[:300], atol=0.02)
  unknown = bytearray(raw)
  unknown[236:244] = b"-1      "
  (tmp_path / "open.edf").write_bytes(bytes(unknown))
  rec = edf.read_edf(tmp_path / "open.edf")
  assert rec.duration_s == 4 and "-1" in rec.warnings[0]
  np.testing.assert_allclose(rec.signals[0].data, eeg, atol=0.02)


# --------------------------------------------------------------------------- annotations


def _hypnogram(path, start=START):
  labels = ["Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4",
            "Sleep stage R", "Movement time", "Sleep stage ?"]
  notes = [(0.0, 60.0, labels[0])] + [(30.0 * (k + 1), 30.0, label)
                                     for k, label in enumerate(labels[1:], 1)]
  return _write(path, [], [], notes=notes, start=start)


def test_sleep_edf_hypnogram_stages(tmp_path):
  path = _hypnogram(tmp_path / "SC4001EC-Hypnogram.edf")
  stages, events = annotations.read_annotations(path, 10)
  # W W N1 N2 N3(S3) N3(S4) REM movement->? unknown->? (no annotation) -> -1
  np.testing.assert_array_equal(stages, [0, 0, 1, 2, 3, 3, 4, -1, -1, -1])
  assert events == []
  # The hypnogram starts 60 s after the PSG it scores: onsets move by +60 s.
  later = _hypnogram(tmp_path / "late.edf", start=START + datetime.timedelta(seconds=60))
  issues = []
  stages, _ = annotations.read_annotations(later, 10, recording_start=START, issues=issues)
  np.testing.assert_array_equal(stages, [-1, -1, 0, 0, 1, 2, 3, 3, 4, -1])
  assert len(issues) == 1 and "'Sleep stage ?' at 300-330 s lies outside" in issues[0]
  mne = pytest.importorskip("mne")  # an independent TAL parser agrees on onsets and texts
  ours = edf.read_edf(path, labels=()).annotations
  theirs = mne.read_annotations(path)
  assert [(a.onset_s, a.duration_s, a.text) for a in ours] == [
      (float(o), float(d), t) for o, d, t in zip(theirs.onset, theirs.duration,
                                                  theirs.description)]


def test_edf_plus_events_and_clipping_report(tmp_path):
  notes = [(0, 30, "Sleep stage W"), (30, 60, "Sleep stage N2"), (40.5, 12, "Obstructive Apnea"),
           (70, 4, "Arousal"), (85, 20, "Hypopnea"), (200, 10, "SpO2 desaturation"),
           (95, 3, "Lights on")]
  path = _write(tmp_path / "psg.edf", [_header("EEG", 10)], [np.zeros(100)], notes=notes)
  issues = []
  stages, events = annotations.read_annotations(path, 3, issues=issues)  # 90 s recording
  np.testing.assert_array_equal(stages, [0, 2, 2])
  assert [(e.kind, e.onset_s, e.duration_s) for e in events] == [
      ("apnea", 40.5, 12.0), ("arousal", 70.0, 4.0), ("hypopnea", 85.0, 5.0)]
  assert len(issues) == 2 and all("psg.edf" in m for m in issues)
  assert "'Hypopnea' at 85-105 s overruns" in issues[0] and "clipped" in issues[0]
  assert "'SpO2 desaturation' at 200-210 s lies outside" in issues[1] and "dropped" in issues[1]
  raster = annotations.event_raster(events, 3).reshape(-1)
  assert raster[89] & (1 << EVENTS.index("hypopnea"))
  with warnings.catch_warnings(record=True) as caught:  # without `issues`: warnings
    warnings.simplefilter("always")
    annotations.read_annotations(path, 3)
  assert [(w.category, str(w.message)) for w in caught] == [
      (annotations.AnnotationWarning, m) for m in issues]


CSV_CASES = {
    "seconds.csv": ("onset,duration,label\n0,60,W\n60,30,N1\n90,30,N3\n100,10,Central Apnea\n"
                    "120,30,REM\n", {}),
    "clock.txt": ("Start Time;End;Event\n22:30:00;22:31:00;Wake\n22:31:00;22:31:30;Stage 1\n"
                  "22:31:30;22:32:00;Stage 4\n22:31:40;22:31:50;Obstructive Apnea\n"
                  "22:32:00;22:32:30;REM sleep\n", {"recording_start": START}),
    "iso.tsv": ("start\tduration\tdescription\n2021-03-04T22:30:00\t60\tSleep stage W\n"
                "2021-03-04T22:31:00\t30\tSleep stage 1\n2021-03-04T22:31:30\t30\tSleep stage 3\n"
                "2021-03-04T22:31:40\t10\thypopnea\n2021-03-04T22:32:00\t30\tSleep stage R\n",
                {"recording_start": START}),
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_csv_annotations(tmp_path, name):
  text, kwargs = CSV_CASES[name]
  (tmp_path / name).write_text(text)
  stages, events = annotations.read_annotations(tmp_path / name, 6, **kwargs)
  np.testing.assert_array_equal(stages, [0, 0, 1, 3, 4, -1])
  assert len(events) == 1 and events[0].onset_s == 100 and events[0].duration_s == 10


def test_csv_hypnogram_without_onsets_past_midnight_and_errors(tmp_path):
  (tmp_path / "hyp.csv").write_text("stage\nW\nN1\nN2\nN2\nR\n")
  stages, _ = annotations.read_annotations(tmp_path / "hyp.csv", 5)
  np.testing.assert_array_equal(stages, [0, 1, 2, 2, 4])
  (tmp_path / "night.csv").write_text("time,duration,event\n00:10:00,15,Arousal\n")
  _, events = annotations.read_annotations(
      tmp_path / "night.csv", 120, recording_start=datetime.datetime(2021, 3, 4, 23, 30))
  assert events[0].onset_s == 40 * 60
  bad = {"nolabel.csv": ("onset,duration\n0,30\n", "no label column"),
         "number.csv": ("onset,duration,label\n0,thirty,W\n", "line 2: duration 'thirty'"),
         "clock.csv": ("onset,label\n22:00:00,W\n", "clock time; pass recording_start")}
  for name, (text, message) in bad.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"{name}: .*{message}"):
      annotations.read_annotations(tmp_path / name, 4)


def test_dispatch_by_content_for_unknown_extensions(tmp_path):
  xml = ("<PSGAnnotation><ScoredEvents><ScoredEvent><EventType>Stages|Stages</EventType>"
         "<EventConcept>REM sleep|5</EventConcept><Start>0</Start><Duration>30</Duration>"
         "</ScoredEvent></ScoredEvents></PSGAnnotation>")
  (tmp_path / "a.ann").write_text(xml)
  (tmp_path / "b.ann").write_text("onset,label\n0,N2\n")
  _hypnogram(tmp_path / "c.edf")
  (tmp_path / "c.ann").write_bytes((tmp_path / "c.edf").read_bytes())
  assert annotations.read_annotations(tmp_path / "a.ann", 1)[0][0] == 4
  assert annotations.read_annotations(tmp_path / "b.ann", 1)[0][0] == 2
  assert annotations.read_annotations(tmp_path / "c.ann", 1, issues=[])[0][0] == 0


def test_xml_overrun_is_reported(tmp_path):
  (tmp_path / "n.xml").write_text(
      "<PSGAnnotation><ScoredEvents><ScoredEvent><EventType>Stages|Stages</EventType>"
      "<EventConcept>Stage 2 sleep|2</EventConcept><Start>0</Start><Duration>120</Duration>"
      "</ScoredEvent></ScoredEvents></PSGAnnotation>")
  issues = []
  stages, _ = annotations.read_nsrr_xml(tmp_path / "n.xml", 3, issues=issues)
  np.testing.assert_array_equal(stages, [2, 2, 2])
  assert len(issues) == 1 and "overruns" in issues[0]


@pytest.mark.parametrize("label,code", [
    ("Sleep stage W", 0), ("Wake", 0), ("W", 0), ("Sleep stage 1", 1), ("N1", 1), ("S2", 2),
    ("Stage 2 sleep|2", 2), ("Sleep stage 3", 3), ("Sleep stage 4", 3), ("N3", 3), ("S4", 3),
    ("Sleep stage R", 4), ("REM", 4), ("REM sleep|5", 4), ("Sleep stage ?", -1),
    ("Movement time", -1), ("Unscored", -1), ("Arousal", None), ("Lights off", None)])
def test_stage_vocabulary(label, code):
  assert annotations.stage_code(label) == code


# --------------------------------------------------------------------------- real recordings


def _package_file(package, relative):
  spec = importlib.util.find_spec(package)  # locate only: importing may need extra deps
  if spec is None or spec.origin is None:
    pytest.skip(f"{package} is not installed")
  path = pathlib.Path(spec.origin).parent / relative
  if not path.exists():
    pytest.skip(f"{package} does not ship {relative}")
  return path


PYEDFLIB_FILES = ["tests/data/test_generator.edf", "tests/data/test_generator.bdf",
                  "tests/data/test_legacy.edf", "tests/data/test_subsecond.edf",
                  "tests/data/test_utf8.edf"]
BSN = "notebook_files/osf_files/signal_samples/"
BSN_FILES = ["S001R02.edf", "supine_1min.edf", "eda_slow_signal.edf", "eeg_acoustic.edf"]


@pytest.mark.parametrize("package,relative", [("pyedflib", f) for f in PYEDFLIB_FILES] +
                         [("biosignalsnotebooks", BSN + f) for f in BSN_FILES],
                         ids=lambda v: pathlib.Path(v).name)
def test_real_files_match_an_independent_reader(package, relative):
  path = _package_file(package, relative)
  rec = edf.read_edf(path)
  assert rec.signals and rec.duration_s > 0 and not rec.gaps
  for s in rec.signals:
    assert len(s.data) == round(rec.duration_s * s.rate) and np.isfinite(s.data).all()
  # Our numpy decoder agrees with pyedflib (the path taken) sample for sample.
  hdr = edf.read_header(path)
  records = edf._records(hdr)
  ordinary = [i for i, s in enumerate(hdr.signals) if not s.is_annotation]
  for i, s in zip(ordinary[:8], rec.signals):
    np.testing.assert_allclose(edf._decode(hdr, records, i), s.data, rtol=1e-9, atol=1e-9)
  mne = pytest.importorskip("mne")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    theirs = mne.read_annotations(path)
  for s in rec.signals[:8]:
    pick = [n for n in raw.ch_names if n.strip() == s.label.strip()]
    if len(pick) != 1 or raw.info["sfreq"] != s.rate:
      continue  # mne renames duplicate labels and resamples mixed rates
    scale = 1e6 if s.unit.lower() == "uv" else 1e3 if s.unit.lower() == "mv" else 1.0
    step = abs(hdr.signals[ordinary[rec.signals.index(s)]].physical_max -
               hdr.signals[ordinary[rec.signals.index(s)]].physical_min) / 2 ** 16
    np.testing.assert_allclose(raw.get_data(picks=pick)[0] * scale, s.data, atol=step)
  texts = [t for t in theirs.description if t]
  assert [a.text for a in rec.annotations] == texts
  np.testing.assert_allclose([a.onset_s for a in rec.annotations],
                             np.asarray(theirs.onset)[[bool(t) for t in theirs.description]],
                             atol=1e-6)  # both count from the first sample (sub-second start)


def test_real_physionet_eeg_and_ecg_through_channel_maps(tmp_path):
  ecg_path = _package_file("biosignalsnotebooks", BSN + "supine_1min.edf")
  rec = edf.read_edf(ecg_path)
  r = channels.resolve_channels(rec)
  assert list(r.signals) == [("ecg", "ecg")] and r.unmatched == []
  ecg = r.signals[("ecg", "ecg")]
  assert ecg.unit == "mV" and ecg.rate == 1000
  # Real ECG: the autocorrelation peaks at one beat, 0.4-1.5 s (40-150 bpm).
  x = ecg.data - ecg.data.mean()
  ac = np.correlate(x[:20000], x[:20000], "full")[19999:]
  beat = (400 + np.argmax(ac[400:1500])) / 1000
  assert 0.4 < beat < 1.5 and ac[int(beat * 1000)] > 0.3 * ac[0]
  eeg_path = _package_file("biosignalsnotebooks", BSN + "S001R02.edf")
  rec = edf.read_edf(eeg_path)  # 64-channel EEG (EEG Motor Movement/Imagery), labels "C4.."
  assert channels.resolve_channels(rec).signals == {}  # no mastoid reference: nothing canonical
  (tmp_path / "eegmmidb.json").write_text(
      '{"eeg": {"c4_m1": ["C4"], "c3_m2": ["C3"]}, "_derive": {"eog.e1": '
      '[{"plus": ["Fp1"], "minus": ["Fpz"]}]}}')
  r = channels.resolve_channels(rec, tmp_path / "eegmmidb.json")
  assert [s.label for s in r.signals.values()] == ["C4..", "C3..", "Fp1. - Fpz."]
  assert len(r.unmatched) == 64 - 4 and "Cz.." in r.unmatched
  c4 = rec.signals[[s.label for s in rec.signals].index("C4..")].data
  np.testing.assert_array_equal(r.signals[("eeg", "c4_m1")].data, c4)
