"""Tests for data_prep.synthetic: real file formats, determinism and stage-dependent physiology."""

import csv
import dataclasses
import datetime
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
import pyedflib
import pytest
from scipy import signal as sps

from data_prep import physiology, synthetic

W, N1, N2, N3, REM = range(5)
CONCEPT_TO_STAGE = {v: k for k, v in synthetic.STAGE_CONCEPTS.items()}
HOURS = 1.0
N_SUBJECTS = 4


# --------------------------------------------------------------------------------------- helpers
def parse_xml(path):
  """Returns (hypnogram from the merged stage runs, [(concept, start, duration, element)], root)."""
  root = ET.parse(path).getroot()
  runs, events = [], []
  for ev in root.iter("ScoredEvent"):
    etype = ev.findtext("EventType") or ""
    concept = ev.findtext("EventConcept")
    start, dur = float(ev.findtext("Start")), float(ev.findtext("Duration"))
    if etype == "Stages|Stages":
      runs.append((CONCEPT_TO_STAGE[concept], start, dur))
    elif concept != "Recording Start Time":
      events.append((concept, start, dur, ev))
  hyp = (
      np.concatenate([np.full(int(round(d / 30)), s) for s, _, d in runs]) if runs else np.zeros(0)
  )
  return hyp, runs, events, root


def epochs(x, fs):
  n = len(x) // int(30 * fs)
  return x[: n * int(30 * fs)].reshape(n, int(30 * fs))


def band_power(x, fs, lo, hi):
  """Absolute power per 30-s epoch in [lo, hi) Hz."""
  f, p = sps.welch(epochs(x, fs), fs, nperseg=int(4 * fs), axis=-1)
  m = (f >= lo) & (f < hi)
  return p[:, m].sum(-1) * (f[1] - f[0])


def stage_mean(values, hyp, stage):
  return float(np.mean(values[hyp == stage]))


def kappa(a, b, k=5):
  a, b = np.asarray(a), np.asarray(b)
  cm = np.zeros((k, k))
  np.add.at(cm, (a, b), 1)
  cm /= cm.sum()
  pe = float(cm.sum(0) @ cm.sum(1))
  return (float(np.trace(cm)) - pe) / (1 - pe)


def site(name):
  return synthetic.make_site(0 if name == "a" else 1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("cohort")
  meta = synthetic.write_cohort(out, n_subjects=N_SUBJECTS, n_sites=2, hours=HOURS, seed=0)
  return out, meta


@pytest.fixture(scope="module")
def apnoeic_night():
  """A site-A night of a subject with severe sleep apnoea (many scored events)."""
  subj = synthetic.SubjectSpec("sub-9001", "site-a-9001", "site-a", 60, "M", 34.0, 35.0, ())
  return synthetic.simulate_night(subj, site("a"), 1.5, np.random.default_rng(7))


@pytest.fixture(scope="module")
def night_b():
  subj = synthetic.SubjectSpec("sub-9002", "site-b-9002", "site-b", 30, "F", 22.0, 5.0, ())
  return synthetic.simulate_night(subj, site("b"), 1.5, np.random.default_rng(11))


# ----------------------------------------------------------------------------------------- files
def test_metadata_csv(cohort):
  out, meta = cohort
  assert meta == out / "metadata.csv"
  with open(meta, newline="") as fh:
    rows = list(csv.DictReader(fh))
  assert list(rows[0]) == ["recording_id", "subject_id", "site", "age", "sex", "bmi", "ahi"]
  assert [r["recording_id"] for r in rows] == [
      "site-a-0001",
      "site-b-0002",
      "site-a-0003",
      "site-b-0004",
  ]
  assert [r["subject_id"] for r in rows] == [f"sub-{i:04d}" for i in range(1, 5)]
  for r in rows:
    assert r["recording_id"].startswith(r["site"] + "-")
    assert 20 <= int(r["age"]) <= 85 and r["sex"] in ("M", "F") and 18 <= float(r["bmi"]) <= 40
    assert (out / "edf" / f"{r['recording_id']}.edf").is_file()
    assert (out / "annotations" / f"{r['recording_id']}.xml").is_file()
    # ahi is the realised index: scored apneas + hypopneas per hour of scored sleep
    hyp, _, events, _ = parse_xml(out / "annotations" / f"{r['recording_id']}.xml")
    n_resp = sum(c.split("|")[0] in ("Obstructive apnea", "Hypopnea") for c, *_ in events)
    assert float(r["ahi"]) == pytest.approx(n_resp / (np.sum(hyp > 0) / 120), abs=0.006)


def test_edf_readable_with_expected_montage(cohort):
  out, _ = cohort
  missing_pres = 0
  for path in sorted((out / "edf").glob("*.edf")):
    montage = (
        synthetic.SITE_A_MONTAGE if path.stem.startswith("site-a") else synthetic.SITE_B_MONTAGE
    )
    with pyedflib.EdfReader(str(path)) as r:
      labels = r.getSignalLabels()
      assert r.filetype == pyedflib.FILETYPE_EDFPLUS
      assert r.getStartdatetime() == datetime.datetime(2000, 1, 1, 22, 0, 0)
      assert r.getFileDuration() == HOURS * 3600
      assert r.datarecord_duration == 1
      expected = [lab for lab in montage if lab in labels]
      assert labels == expected
      assert set(montage) - set(labels) <= {"Pres"}
      missing_pres += montage is synthetic.SITE_B_MONTAGE and "Pres" not in labels
      for i, lab in enumerate(labels):
        spec = montage[lab]
        assert r.getSampleFrequency(i) == spec.fs
        assert r.getPhysicalDimension(i) == spec.unit
        assert (r.getPhysicalMinimum(i), r.getPhysicalMaximum(i)) == spec.phys_range
        x = r.readSignal(i)
        assert len(x) == HOURS * 3600 * spec.fs
        assert np.all(np.isfinite(x)) and (x.std() > 0 or spec.kind == "position")
  assert (
      missing_pres == 1
  )  # a seeded quarter of the 2 site-B recordings (rounded) lacks nasal pressure


def test_edf_roundtrip_matches_in_memory_night(tmp_path, night_b):
  path = synthetic.write_edf(night_b, tmp_path / "b.edf")
  with pyedflib.EdfReader(str(path)) as r:
    for i, lab in enumerate(r.getSignalLabels()):
      lo, hi = night_b.site.montage[lab].phys_range
      np.testing.assert_allclose(
          r.readSignal(i), night_b.signals[lab], atol=(hi - lo) / 65535 + 1e-9
      )


def test_xml_shape_and_stage_runs_reproduce_hypnogram(tmp_path, apnoeic_night):
  night = apnoeic_night
  path = synthetic.write_xml(night, tmp_path / "n.xml")
  text = path.read_text()
  assert text.startswith(
      '<?xml version="1.0" encoding="UTF-8"?>\n<PSGAnnotation><SoftwareVersion>Compumedics'
  )
  hyp, runs, events, root = parse_xml(path)
  assert root.tag == "PSGAnnotation" and root.findtext("EpochLength") == "30"
  first = root.find("ScoredEvents")[0]
  assert first.findtext("EventConcept") == "Recording Start Time"
  assert float(first.findtext("Duration")) == night.duration_s == 5400
  assert first.findtext("ClockTime") == "00.00.00 22.00.00"
  np.testing.assert_array_equal(hyp, night.hypnogram)
  assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))  # equal stages merged
  assert [s for _, s, _ in runs] == [
      30.0 * i for i in np.r_[0, np.cumsum([d / 30 for *_, d in runs])[:-1]]
  ]
  # events: one ScoredEvent per in-memory event, with the NSRR concepts and fields
  assert len(events) == len(night.events) > 20
  concepts = {c for c, *_ in events}
  assert {
      "Obstructive apnea|Obstructive Apnea",
      "Hypopnea|Hypopnea",
      "SpO2 desaturation|SpO2 desaturation",
      "Arousal|Arousal ()",
  } <= concepts
  for (concept, start, dur, el), ev in zip(events, night.events):
    assert (start, dur) == (pytest.approx(ev.onset_s), pytest.approx(ev.duration_s))
    if concept.startswith(("Obstructive apnea", "Hypopnea")):
      assert el.findtext("EventType") == "Respiratory|Respiratory"
      assert el.findtext("SignalLocation") == "ABDO RES"
    if concept.startswith("SpO2"):
      assert float(el.findtext("SpO2Nadir")) <= float(el.findtext("SpO2Baseline")) - 2
    if concept.startswith("Arousal"):
      assert el.findtext("EventType") == "Arousals|Arousals"


def test_determinism_same_seed_same_bytes(cohort, tmp_path):
  out, _ = cohort
  again = synthetic.write_cohort(
      tmp_path / "again", n_subjects=N_SUBJECTS, n_sites=2, hours=HOURS, seed=0
  )
  files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
  assert len(files) == 2 * N_SUBJECTS + 1
  for rel in files:
    assert (out / rel).read_bytes() == (again.parent / rel).read_bytes(), rel
  other = synthetic.write_cohort(tmp_path / "other", n_subjects=1, n_sites=2, hours=HOURS, seed=1)
  assert (other.parent / "edf/site-a-0001.edf").read_bytes() != (
      out / "edf/site-a-0001.edf"
  ).read_bytes()


# ---------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("age", [20, 50, 85])
def test_all_five_stages_in_a_one_hour_night(age):
  for seed in range(25):
    hyp = physiology.simulate_hypnogram(120, age, np.random.default_rng(seed))
    assert len(hyp) == 120 and set(np.unique(hyp).tolist()) == {W, N1, N2, N3, REM}, seed
    onset = int(np.argmax(hyp > 0))
    assert hyp[0] == W and 4 <= onset <= 40


def test_full_night_architecture():
  pct, n3_first_half = [], []
  for seed in range(20):
    hyp = physiology.simulate_hypnogram(960, 40, np.random.default_rng(seed))
    pct.append(np.bincount(hyp, minlength=5) / len(hyp))
    n3 = np.flatnonzero(hyp == N3)
    n3_first_half.append(np.mean(n3 < 480))
    assert np.sum(hyp[640:] == REM) > 1.5 * np.sum(
        hyp[:320] == REM
    )  # REM episodes lengthen across the night
  w, n1, n2, n3, rem = np.mean(pct, 0)
  assert (
      0.03 < n1 < 0.10
      and 0.42 < n2 < 0.60
      and 0.12 < n3 < 0.25
      and 0.16 < rem < 0.26
      and 0.04 < w < 0.15
  )
  assert np.mean(n3_first_half) > 0.75
  old = np.mean(
      [
          np.mean(physiology.simulate_hypnogram(960, 80, np.random.default_rng(s)) == N3)
          for s in range(20)
      ]
  )
  assert old < n3 * 0.7  # N3 declines with age


# ------------------------------------------------------------------------------------ physiology
def test_eeg_stage_spectra(apnoeic_night, night_b):
  for night, lab in ((apnoeic_night, "EEG"), (night_b, "EEG3")):
    x, fs, hyp = night.signals[lab], night.rates[lab], night.hypnogram
    delta = band_power(x, fs, 0.5, 2.0)
    alpha = band_power(x, fs, 8.0, 12.0)
    sigma = band_power(x, fs, 12.0, 15.0)
    assert (
        stage_mean(delta, hyp, N3) > 2 * stage_mean(delta, hyp, N2) > 2 * stage_mean(delta, hyp, W)
    )
    assert stage_mean(alpha, hyp, W) > 1.5 * stage_mean(alpha, hyp, N2)
    assert stage_mean(sigma, hyp, N2) > 1.3 * stage_mean(sigma, hyp, REM)  # spindles
    # N3: high-amplitude slow waves (>75 uV peak-to-peak)
    ep = epochs(x, fs)[hyp == N3]
    assert np.median(np.ptp(ep, axis=1)) > 150


def test_eog_emg_stage_patterns(night_b):
  night, hyp = night_b, night_b.hypnogram
  emg_pow = band_power(
      night.signals["EMG"], night.rates["EMG"], 10, 40
  )  # muscle band, below the mains
  assert (
      stage_mean(emg_pow, hyp, W) > stage_mean(emg_pow, hyp, N2) > 2 * stage_mean(emg_pow, hyp, REM)
  )
  assert stage_mean(emg_pow, hyp, N3) < stage_mean(emg_pow, hyp, N1)
  el, er = (epochs(night.signals[k], night.rates[k]) for k in ("EOG-L", "EOG-R"))
  corr = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(el, er)])
  assert np.median(corr[hyp == REM]) < -0.3  # conjugate eye movements: opposite polarity in L/R
  assert np.median(corr[hyp == N3]) > 0.5  # EEG delta leaking into both EOG leads
  # horizontal eye movements live in the L-R difference (common-mode EEG leakage cancels)
  horiz = night.signals["EOG-L"] - night.signals["EOG-R"]
  fs = night.rates["EOG-L"]
  rapid = band_power(horiz, fs, 0.3, 4.0)
  assert stage_mean(rapid, hyp, REM) > 4 * stage_mean(rapid, hyp, N2)
  slow = band_power(horiz, fs, 0.05, 0.5)
  assert stage_mean(slow, hyp, N1) > 4 * stage_mean(slow, hyp, N2)  # slow rolling eye movements


def test_ecg_heart_rate_by_stage(apnoeic_night):
  night, hyp = apnoeic_night, apnoeic_night.hypnogram
  x, fs = night.signals["ECG"], night.rates["ECG"]
  peaks, _ = sps.find_peaks(x, height=0.5 * np.percentile(x, 99.9), distance=int(0.33 * fs))
  rr = np.diff(peaks) / fs
  assert 0.6 < np.median(rr) < 1.4 and np.std(rr) > 0.01  # 43-100 bpm with variability
  hr_t, hr = peaks[1:] / fs, 60 / rr
  ep = (hr_t // 30).astype(int)
  per_epoch = np.bincount(ep, hr, len(hyp)) / np.maximum(np.bincount(ep, minlength=len(hyp)), 1)
  assert stage_mean(per_epoch, hyp, N3) < stage_mean(per_epoch, hyp, W) - 3


def test_breathing_apneas_and_desaturations(apnoeic_night):
  night = apnoeic_night
  fs = night.rates["THOR RES"]
  thor, flow = night.signals["THOR RES"], night.signals["NEW AIR"]
  f, p = sps.welch(thor, fs, nperseg=int(120 * fs))
  assert 10 <= 60 * f[np.argmax(p)] <= 20  # breaths per minute
  spo2 = night.signals["SaO2"]
  assert 93 <= np.median(spo2) <= 99
  apneas = [e for e in night.events if e.kind == "obstructive_apnea"]
  desats = [e for e in night.events if e.kind == "desaturation"]
  assert len(apneas) >= 5 and len(desats) >= 0.8 * len(apneas)
  amp = lambda x, a, b: np.std(x[int(a * fs) : int(b * fs)])  # noqa: E731
  lagged_nadirs = []
  for e in apneas:
    a, b = e.onset_s + 3, e.onset_s + e.duration_s - 1
    assert amp(flow, a, b) < 0.3 * amp(flow, e.onset_s - 40, e.onset_s - 5)  # no airflow
    assert amp(thor, a, b) > 0.5 * amp(thor, e.onset_s - 40, e.onset_s - 5)  # effort continues
    end = int(e.onset_s + e.duration_s)
    window = spo2[end : end + 50]
    lagged_nadirs.append(
        (
            np.median(spo2[max(0, int(e.onset_s) - 20) : int(e.onset_s)]) - window.min(),
            np.argmin(window),
        )
    )
  drops, lags = np.array(lagged_nadirs).T
  assert (
      np.median(drops) >= 3 and 10 <= np.median(lags) <= 45
  )  # SpO2 nadir ~20-30 s after the apnea
  for d in desats:
    assert d.spo2_baseline - d.spo2_nadir >= 2


def test_arousals_raise_emg_and_heart_rate(apnoeic_night):
  night = apnoeic_night
  fs = night.rates["EMG"]
  emg = night.signals["EMG"]
  ratio = [
      np.std(emg[int(e.onset_s * fs) : int((e.onset_s + e.duration_s) * fs)])
      / np.std(emg[int((e.onset_s - 15) * fs) : int((e.onset_s - 3) * fs)])
      for e in night.events
      if e.kind == "arousal" and e.onset_s > 20
  ]
  assert len(ratio) >= 5 and np.median(ratio) > 1.8


def test_sites_missing_sensors_gain_and_mains(apnoeic_night, night_b):
  subj = synthetic.SubjectSpec("sub-1", "site-b-0001", "site-b", 50, "M", 27.0, 10.0, ("Pres",))
  b = site("b")
  dead = dataclasses.replace(b, emg_disconnect_prob=1.0)
  night = synthetic.simulate_night(subj, dead, 1.0, np.random.default_rng(3))
  assert "Pres" not in night.signals and "Flow" in night.signals
  # the same night with the chin electrode attached: identical except for the flat EMG stretch
  intact = dataclasses.replace(b, emg_disconnect_prob=0.0)
  twin = synthetic.simulate_night(subj, intact, 1.0, np.random.default_rng(3))
  np.testing.assert_array_equal(twin.signals["EEG3"], night.signals["EEG3"])
  flat = lambda nt: np.sqrt(np.mean(nt.signals["EMG"].reshape(-1, 256) ** 2, axis=1)) < 0.2  # noqa: E731
  assert 120 < np.sum(flat(night)) < 0.6 * len(flat(night))  # a stretch, not the whole night
  assert np.sum(flat(twin)) == 0
  # amplifier gain scales the biopotentials
  half = dataclasses.replace(dead, gain=0.4)
  n2 = synthetic.simulate_night(subj, half, 1.0, np.random.default_rng(3))
  ratio = n2.signals["EEG3"].std() / night.signals["EEG3"].std()
  assert ratio == pytest.approx(0.4 / b.gain, rel=0.05)
  # mains interference at the site frequency
  for nt, lab, hz in ((apnoeic_night, "EEG", 60), (night_b, "EEG3", 50)):
    f, p = sps.welch(nt.signals[lab], nt.rates[lab], nperseg=int(30 * nt.rates[lab]))
    peak = p[np.argmin(np.abs(f - hz))]
    assert peak > 5 * np.median(p[(f > hz - 8) & (f < hz - 2)])
    other = 50 if hz == 60 else 60
    if other < nt.rates[lab] / 2:
      assert p[np.argmin(np.abs(f - other))] < peak / 5


def test_values_clipped_into_physical_range(apnoeic_night, night_b):
  for night in (apnoeic_night, night_b):
    for lab, x in night.signals.items():
      lo, hi = night.site.montage[lab].phys_range
      assert lo <= x.min() and x.max() <= hi
    assert len(night.signals["SaO2" if "SaO2" in night.signals else "SpO2"]) == night.duration_s


def test_extra_sites_reuse_montages():
  sites = [synthetic.make_site(j) for j in range(4)]
  assert [s.name for s in sites] == ["site-a", "site-b", "site-c", "site-d"]
  assert sites[2].montage == sites[0].montage and sites[3].montage == sites[1].montage
  assert (sites[0].line_noise_hz, sites[1].line_noise_hz) == (60, 50)
  assert len({(s.line_noise_hz, s.gain) for s in sites}) == 4


# -------------------------------------------------------------------------------- realism (YASA)
def yasa_agreement(edf_path, xml_path, age=None, male=None):
  """Cohen's kappa of YASA's pretrained stager (EEG C4, EOG L, chin EMG) vs the XML hypnogram.

  age/male default to the row of the cohort's metadata.csv (next to edf/ and annotations/).
  """
  import mne  # pylint: disable=g-import-not-at-top
  import yasa  # pylint: disable=g-import-not-at-top

  edf_path = pathlib.Path(edf_path)
  if age is None or male is None:
    with open(edf_path.parent.parent / "metadata.csv", newline="") as fh:
      row = next(r for r in csv.DictReader(fh) if r["recording_id"] == edf_path.stem)
    age, male = int(row["age"]), row["sex"] == "M"
  raw = mne.io.read_raw_edf(edf_path, preload=True, verbose="ERROR")
  names = set(raw.ch_names)
  eeg = "EEG" if "EEG" in names else "EEG3"
  eog = "EOG(L)" if "EOG(L)" in names else "EOG-L"
  staging = yasa.SleepStaging(
      raw, eeg_name=eeg, eog_name=eog, emg_name="EMG", metadata=dict(age=age, male=male)
  )
  pred = np.asarray(staging.predict().as_int().values, int)
  truth, *_ = parse_xml(xml_path)
  n = min(len(pred), len(truth))
  return kappa(truth[:n], pred[:n])


@pytest.mark.slow
def test_yasa_agrees_with_generator_hypnogram(tmp_path):
  pytest.importorskip("yasa")
  pytest.importorskip("mne")
  meta = synthetic.write_cohort(tmp_path, n_subjects=4, n_sites=2, hours=7.0, seed=0)
  kappas = {}
  for path in sorted((meta.parent / "edf").glob("*.edf")):
    kappas[path.stem] = yasa_agreement(path, meta.parent / "annotations" / f"{path.stem}.xml")
  print(
      "YASA kappa per recording:",
      {k: round(v, 3) for k, v in kappas.items()},
      "mean",
      round(float(np.mean(list(kappas.values()))), 3),
  )
  assert min(kappas.values()) >= 0.5
  assert np.mean(list(kappas.values())) >= 0.6
