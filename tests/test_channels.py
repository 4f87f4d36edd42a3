"""Channel harmonisation: cohort label maps, units, polarity, derivations, unmatched report."""

import json

import numpy as np
import pytest

from data_prep import channels, edf
from sleepjax.modalities import CANONICAL

SITE_A = ["EEG", "EEG(sec)", "EOG(L)", "EOG(R)", "EMG", "ECG", "SaO2", "THOR RES", "ABDO RES",
          "AIRFLOW", "NEW AIR", "POSITION"]
SITE_B = ["EEG3", "EEG2", "EOG-L", "EOG-R", "EMG", "EKG", "SpO2", "Thor", "Abdo", "Flow", "Pres",
          "Pos"]
CANONICAL_ORDER = [("eeg", "c4_m1"), ("eeg", "c3_m2"), ("eog", "e1"), ("eog", "e2"),
                   ("emg", "chin"), ("ecg", "ecg"), ("spo2", "spo2"), ("resp_effort", "thorax"),
                   ("resp_effort", "abdomen"), ("airflow", "thermistor"),
                   ("nasal_pressure", "pressure")]


def _sig(label, rate=100.0, unit="", data=None, seconds=4):
  if data is None:
    data = np.random.default_rng(len(label)).standard_normal(int(rate * seconds))
  return edf.Signal(label, rate, unit, np.asarray(data, float))


def _rec(*signals):
  signals = [s if isinstance(s, edf.Signal) else _sig(s) for s in signals]
  return edf.Recording("mem.edf", 4.0, signals)


@pytest.mark.parametrize("labels", [SITE_A, SITE_B], ids=["site_a", "site_b"])
def test_synthetic_sites_map_through_generic(labels):
  r = channels.resolve_channels(_rec(*labels))
  expected = dict(zip([k for k in CANONICAL_ORDER], labels[:11]))
  assert {k: s.label for k, s in r.signals.items()} == expected
  assert r.unmatched == [labels[11]]


def test_matching_ignores_case_whitespace_and_trailing_dots():
  r = channels.resolve_channels(_rec(" eeg ( SEC ) ", "c4..", "m1", "saO2"))
  assert {k: s.label for k, s in r.signals.items()} == {
      ("eeg", "c3_m2"): " eeg ( SEC ) ", ("eeg", "c4_m1"): "c4.. - m1", ("spo2", "spo2"): "saO2"}
  assert r.unmatched == []


@pytest.mark.parametrize("label,unit,value,expected,canonical", [
    ("EEG", "uV", 5.0, 5.0, "uV"), ("EEG", "UV", 5.0, 5.0, "uV"), ("EEG", "µV", 5.0, 5.0, "uV"),
    ("EEG", "mV", 0.05, 50.0, "uV"), ("EEG", "MV", 0.05, 50.0, "uV"), ("EEG", "V", 2e-5, 20.0, "uV"),
    ("EOG(L)", "mv", 0.1, 100.0, "uV"), ("EMG", "nV", 3000.0, 3.0, "uV"),
    ("ECG", "uV", 1500.0, 1.5, "mV"), ("ECG", "V", 0.001, 1.0, "mV"), ("ECG", "mV", 1.2, 1.2, "mV"),
    ("SaO2", "%", 97.0, 97.0, "%"), ("HR", "bpm", 60.0, 60.0, "bpm"), ("HR", "Hz", 1.0, 60.0, "bpm"),
    ("HR", "beats/min", 70.0, 70.0, "bpm"), ("Thor", "mV", 3.0, 3.0, "a.u.")])
def test_units_are_converted_to_canonical(label, unit, value, expected, canonical):
  r = channels.resolve_channels(_rec(_sig(label, 10, unit, np.full(40, value))))
  (sig,) = r.signals.values()
  assert sig.unit == canonical
  np.testing.assert_allclose(sig.data, expected, rtol=1e-12)
  assert r.notes == []


def test_unknown_unit_is_assumed_canonical_and_noted():
  r = channels.resolve_channels(_rec(_sig("EEG", 10, "furlongs", np.ones(40))))
  np.testing.assert_array_equal(r.signals[("eeg", "c4_m1")].data, 1.0)
  assert r.notes == ["'EEG' (eeg/c4_m1): unit 'furlongs' is not a voltage; assumed uV"]


def test_derivation_from_referential_channels_with_resampled_reference():
  t = np.arange(400) / 100
  c4 = _sig("C4", 100, "uV", 40 * np.sin(2 * np.pi * 1.0 * t))
  m1 = _sig("M1", 50, "mV", 0.01 * np.sin(2 * np.pi * 0.5 * t[::2]))  # other rate and unit
  r = channels.resolve_channels(_rec(c4, m1, "O1"))
  sig = r.signals[("eeg", "c4_m1")]
  assert sig.label == "C4 - M1" and sig.rate == 100 and sig.unit == "uV"
  want = 40 * np.sin(2 * np.pi * t) - 10 * np.sin(2 * np.pi * 0.5 * t)
  np.testing.assert_allclose(sig.data[20:-20], want[20:-20], atol=0.5)
  assert r.unmatched == ["O1"]  # inputs of the derivation are matched
  assert any("'M1' resampled 50 -> 100 Hz" in n for n in r.notes)
  assert "eeg/c4_m1 derived as 'C4' - 'M1' (generic map)" in r.notes


def test_direct_channel_beats_derivation_and_duplicates_are_noted():
  r = channels.resolve_channels(_rec("C4", "M1", "EEG", "C4-M1"))
  assert r.signals[("eeg", "c4_m1")].label == "C4-M1"  # earlier alias, no derivation
  assert r.unmatched == ["C4", "M1"]
  assert "'EEG' also maps to eeg/c4_m1; another signal is used" in r.notes


# Per cohort: labels as NSRR / PhysioNet document them -> expected canonical sources.
COHORTS = {
    "shhs": (["SaO2", "H.R.", "EEG(sec)", "ECG", "EMG", "EOG(L)", "EOG(R)", "EEG", "THOR RES",
              "ABDO RES", "POSITION", "LIGHT", "NEW AIR", "AIRFLOW", "OX stat"],
             {("spo2", "spo2"): "SaO2", ("heart_rate", "hr"): "H.R.",
              ("eeg", "c3_m2"): "EEG(sec)", ("ecg", "ecg"): "ECG", ("emg", "chin"): "EMG",
              ("eog", "e1"): "EOG(L)", ("eog", "e2"): "EOG(R)", ("eeg", "c4_m1"): "EEG",
              ("resp_effort", "thorax"): "THOR RES", ("resp_effort", "abdomen"): "ABDO RES",
              ("airflow", "thermistor"): "NEW AIR"},
             ["POSITION", "LIGHT", "OX stat"]),
    "shhs2": (["SaO2", "PR", "EEG 2", "EEG"], {("spo2", "spo2"): "SaO2", ("heart_rate", "hr"): "PR",
                                               ("eeg", "c3_m2"): "EEG 2", ("eeg", "c4_m1"): "EEG"},
              []),
    "mesa": (["EKG", "EOG-L", "EOG-R", "EMG", "EEG1", "EEG2", "EEG3", "Pres", "Flow", "Snore", "Thor",
              "Abdo", "Leg", "Therm", "Pos", "Pleth", "OxStatus", "SpO2", "HR", "DHR"],
             {("ecg", "ecg"): "EKG", ("eog", "e1"): "EOG-L", ("eog", "e2"): "EOG-R",
              ("emg", "chin"): "EMG", ("eeg", "c4_m1"): "EEG3",
              ("nasal_pressure", "pressure"): "Pres", ("resp_effort", "thorax"): "Thor",
              ("resp_effort", "abdomen"): "Abdo", ("airflow", "thermistor"): "Therm",
              ("spo2", "spo2"): "SpO2", ("heart_rate", "hr"): "HR", ("ppg", "ppg"): "Pleth"},
             ["EEG1", "EEG2", "Snore", "Leg", "Pos", "OxStatus"]),
    "mros": (["Position", "Leg L", "Leg R", "C3", "C4", "A1", "A2", "ROC", "LOC", "ECG L", "ECG R",
              "L Chin", "R Chin", "Airflow", "SUM", "Thoracic", "Abdominal", "STAT", "HR", "SAO2",
              "Cannula Flow", "DHR"],
             {("eeg", "c3_m2"): "C3 - A2", ("eeg", "c4_m1"): "C4 - A1", ("eog", "e1"): "LOC - A2",
              ("eog", "e2"): "ROC - A1", ("ecg", "ecg"): "ECG L - ECG R",
              ("emg", "chin"): "L Chin - R Chin", ("airflow", "thermistor"): "Airflow",
              ("resp_effort", "thorax"): "Thoracic", ("resp_effort", "abdomen"): "Abdominal",
              ("heart_rate", "hr"): "HR", ("spo2", "spo2"): "SAO2",
              ("nasal_pressure", "pressure"): "Cannula Flow"},
             ["Position", "Leg L", "Leg R", "SUM", "STAT"]),
    "cfs": (["C3", "C4", "A1", "A2", "LOC", "ROC", "ECG2", "ECG1", "EMG1", "EMG2", "EMG3", "L Leg",
             "R Leg", "Airflow", "Thor Effort", "Abdo Effort", "Sum", "Snore", "Position",
             "Ox Status", "Pulse", "SpO2", "Nasal Pres", "PlethWV"],
            {("eeg", "c3_m2"): "C3 - A2", ("eeg", "c4_m1"): "C4 - A1", ("eog", "e1"): "LOC - A2",
             ("eog", "e2"): "ROC - A1", ("ecg", "ecg"): "ECG1 - ECG2", ("emg", "chin"): "EMG1 - EMG2",
             ("airflow", "thermistor"): "Airflow", ("resp_effort", "thorax"): "Thor Effort",
             ("resp_effort", "abdomen"): "Abdo Effort", ("heart_rate", "hr"): "Pulse",
             ("spo2", "spo2"): "SpO2", ("nasal_pressure", "pressure"): "Nasal Pres",
             ("ppg", "ppg"): "PlethWV"},
            ["EMG3", "L Leg", "R Leg", "Sum", "Snore", "Position", "Ox Status"]),
    "ccshs": (["C3", "C4", "M1", "M2", "LOC", "ROC", "ECG1", "ECG2", "EMG1", "EMG2", "SpO2"],
              {("eeg", "c3_m2"): "C3 - M2", ("eeg", "c4_m1"): "C4 - M1", ("eog", "e1"): "LOC - M2",
               ("eog", "e2"): "ROC - M1", ("ecg", "ecg"): "ECG1 - ECG2",
               ("emg", "chin"): "EMG1 - EMG2", ("spo2", "spo2"): "SpO2"}, []),
    "chat": (["E1", "E2", "F3", "F4", "C3", "C4", "T3", "T4", "O1", "O2", "M1", "M2", "Lchin",
              "Rchin", "Cchin", "ECG1", "ECG2", "ECG3", "Airflow", "Cannula Flow", "Chest", "ABD",
              "SUM", "SpO2", "Pleth", "Position", "Cap", "EtCO2"],
             {("eeg", "c3_m2"): "C3 - M2", ("eeg", "c4_m1"): "C4 - M1", ("eog", "e1"): "E1 - M2",
              ("eog", "e2"): "E2 - M1", ("emg", "chin"): "Lchin - Cchin",
              ("ecg", "ecg"): "ECG1 - ECG3", ("airflow", "thermistor"): "Airflow",
              ("nasal_pressure", "pressure"): "Cannula Flow", ("resp_effort", "thorax"): "Chest",
              ("resp_effort", "abdomen"): "ABD", ("spo2", "spo2"): "SpO2", ("ppg", "ppg"): "Pleth"},
             ["F3", "F4", "T3", "T4", "O1", "O2", "Rchin", "ECG2", "SUM", "Position", "Cap",
              "EtCO2"]),
    "wsc": (["E1", "E2", "F3_M2", "Fz_M2", "Cz_M2", "C3_M2", "Pz_M2", "O1_M2", "cchin_l", "lleg_r",
             "ECG", "snore", "flow", "nas_pres", "thorax", "abdomen", "sum", "position", "spo2"],
            {("eog", "e1"): "E1", ("eog", "e2"): "E2", ("eeg", "c3_m2"): "C3_M2",
             ("emg", "chin"): "cchin_l", ("ecg", "ecg"): "ECG", ("airflow", "thermistor"): "flow",
             ("nasal_pressure", "pressure"): "nas_pres", ("resp_effort", "thorax"): "thorax",
             ("resp_effort", "abdomen"): "abdomen", ("spo2", "spo2"): "spo2"},
            ["F3_M2", "Fz_M2", "Cz_M2", "Pz_M2", "O1_M2", "lleg_r", "snore", "sum", "position"]),
    "sleep_edf": (["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "Resp oro-nasal", "EMG submental",
                   "Temp rectal", "Event marker"],
                  {("eeg", "c4_m1"): "EEG Fpz-Cz", ("eog", "e1"): "EOG horizontal",
                   ("airflow", "thermistor"): "Resp oro-nasal", ("emg", "chin"): "EMG submental"},
                  ["EEG Pz-Oz", "Temp rectal", "Event marker"]),
}


@pytest.mark.parametrize("name", sorted(COHORTS))
def test_cohort_maps_resolve_documented_labels(name):
  labels, expected, unmatched = COHORTS[name]
  cohort = name.rstrip("2") if name == "shhs2" else name
  r = channels.resolve_channels(_rec(*labels), cohort)
  assert {k: s.label for k, s in r.signals.items()} == expected
  assert r.unmatched == unmatched
  assert channels.needed_labels([(s, 100.0) for s in labels], cohort) == {
      part for source in expected.values() for part in source.split(" - ")}


def test_cohort_specifics_and_generic_fallback():
  # MESA: "Flow" is nasal pressure only without "Pres"; generic would call it a thermistor.
  r = channels.resolve_channels(_rec("Flow", "EEG2"), "mesa")
  assert list(r.signals) == [("nasal_pressure", "pressure")] and r.unmatched == ["EEG2"]
  # Labels a cohort map does not know fall back to generic (an SHHS export with "SpO2").
  r = channels.resolve_channels(_rec("SpO2", "EEG"), "shhs")
  assert set(r.signals) == {("spo2", "spo2"), ("eeg", "c4_m1")}
  # CHAT without mastoids: E1 (against FPz) through the generic alias.
  assert channels.resolve_channels(_rec("E1"), "chat").signals[("eog", "e1")].label == "E1"
  # Sleep-EDF SC files: the 1-Hz EMG envelope is refused for chin, noted and unmatched.
  r = channels.resolve_channels(_rec(_sig("EMG submental", 1.0)), "sleep_edf")
  assert r.signals == {} and r.unmatched == ["EMG submental"]
  assert "refused for emg/chin: 1 Hz < 10 Hz" in r.notes[0]


def test_map_file_polarity_units_derive_and_ignore(tmp_path):
  path = tmp_path / "lab.json"
  path.write_text(json.dumps({
      "eeg": {"c4_m1": ["CH1"]}, "ecg": {"ecg": ["CH2"]},
      "_derive": {"eog.e1": [{"plus": ["P"], "minus": ["Q"]}]},
      "_polarity": {"CH2": -1, "Q": -1}, "_units": {"CH1": "mV"}, "_ignore": ["EEG"]}))
  r = channels.resolve_channels(_rec(_sig("CH1", 10, "", np.full(40, 0.02)),
                                     _sig("CH2", 10, "mV", np.full(40, 1.5)),
                                     _sig("P", 10, "uV", np.full(40, 7.0)),
                                     _sig("Q", 10, "uV", np.full(40, 2.0)),
                                     _sig("EEG", 10, "uV")), path)
  np.testing.assert_allclose(r.signals[("eeg", "c4_m1")].data, 20.0)  # unit override mV -> uV
  np.testing.assert_allclose(r.signals[("ecg", "ecg")].data, -1.5)  # polarity flipped
  np.testing.assert_allclose(r.signals[("eog", "e1")].data, 9.0)  # P - (-Q): flip before derive
  assert r.unmatched == ["EEG"]  # ignored: generic's EEG = C4-M1 does not apply
  assert "'CH2' (ecg/ecg): polarity inverted" in r.notes


@pytest.mark.parametrize("table,message", [
    ({"eeg": {"cz": ["X"]}}, "'eeg.cz' is not a canonical"),
    ({"eeg": {"c4_m1": ["X"], "c3_m2": ["x"]}}, "label 'x' maps to both"),
    ({"_derives": {}}, "unknown key '_derives'"),
    ({"_polarity": {"X": 2}}, "_polarity values must be 1 or -1"),
    ({"_derive": {"emg.left": []}}, "'emg.left' is not a canonical")])
def test_bad_map_files_raise(tmp_path, table, message):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(table))
  with pytest.raises(ValueError, match=f"bad.json: {message}"):
    channels.load_map(path)


def test_shipped_maps_load_and_unknown_cohort_is_named():
  names = channels.cohorts()
  assert {"generic", "shhs", "mesa", "mros", "cfs", "chat", "ccshs", "wsc", "sleep_edf"} <= set(names)
  for name in names:
    m = channels.load_map(name)
    assert all(ch in CANONICAL[mod].channels for mod, ch in m.aliases)
  with pytest.raises(ValueError, match="unknown cohort channel map 'hsp'"):
    channels.resolve_channels(_rec("EEG"), "hsp")


def test_derived_inputs_of_different_length_are_cut_and_noted():
  r = channels.resolve_channels(_rec(_sig("C3", 10, "uV", np.ones(40)),
                                     _sig("M2", 10, "uV", np.zeros(30))))
  assert r.signals[("eeg", "c3_m2")].data.shape == (30,)
  assert any("differ in length (40 vs 30 samples); cut to 30" in n for n in r.notes)
