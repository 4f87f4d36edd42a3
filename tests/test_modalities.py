"""One place per modality: every difference between modalities is a required field of its record."""

import dataclasses

import numpy as np
import pytest

from data_prep import channels, edf, harmonise, qc, signal
from sleepjax import modalities
from sleepjax.modalities import CANONICAL, Modality, QCLimits


def _required(cls) -> list[str]:
  return [f.name for f in dataclasses.fields(cls)
          if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def test_every_field_of_every_modality_is_required_and_set():
  for cls in (Modality, QCLimits):
    assert _required(cls) == [f.name for f in dataclasses.fields(cls)], f"{cls.__name__} defaults"
  for name, spec in CANONICAL.items():
    assert spec.rate > 0 and spec.channels and spec.unit, name
    assert spec.qc.min_rate > 0 and spec.qc.flat_run_s > 0, name
    assert spec.band_hz is None or len(spec.band_hz) == 2, name
    assert spec.level == (spec.qc.level_range is not None), name  # levels: range-checked only


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Modality)])
def test_a_record_missing_a_field_cannot_be_built(field):
  fields = {f.name: getattr(CANONICAL["eeg"], f.name) for f in dataclasses.fields(Modality)}
  del fields[field]
  with pytest.raises(TypeError, match=field):
    Modality(**fields)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(QCLimits)])
def test_qc_limits_missing_a_field_cannot_be_built(field):
  fields = dataclasses.asdict(CANONICAL["spo2"].qc)
  del fields[field]
  with pytest.raises(TypeError, match=field):
    QCLimits(**fields)


def test_no_per_modality_tables_remain_outside_the_records():
  for module, names in ((signal, ("BANDS", "NOTCH_MODALITIES", "LEVEL_MODALITIES")),
                        (qc, ("MIN_RATE", "MIN_STD", "FLAT_RUN_S", "RANGE", "MAX_AMPLITUDE",
                              "LEVEL")),
                        (harmonise, ("FIXED_SCALING",))):
    assert not [n for n in names if hasattr(module, n)], module.__name__


def test_an_unknown_modality_fails_loudly():
  for check in (lambda: signal.filter_sos("skin_temp", 128.0),
                lambda: qc.check_rate(128.0, "skin_temp"),
                lambda: qc.check_amplitude(np.zeros(3840), 128.0, "skin_temp", 1)):
    with pytest.raises(KeyError, match="skin_temp"):
      check()


def test_a_new_modality_is_one_record(monkeypatch):
  """A modality added as a record alone is filtered, checked and normalised like the others."""
  eda = Modality(rate=32, channels=("eda",), unit="a.u.", band_hz=(0.5, 8.0), notch=False,
                 fixed_scaling=None, qc=QCLimits(min_rate=16.0, flat_run_s=10.0, min_std=None,
                                                 level_range=None, max_amplitude=None))
  monkeypatch.setitem(modalities.CANONICAL, "eda", eda)
  t = np.arange(4 * 30 * 64) / 64.0
  x = np.sin(2 * np.pi * 1.2 * t) + 0.5 * np.sin(2 * np.pi * 0.01 * t)  # a 1.2 Hz wave + slow drift
  h = harmonise.harmonise({("eda", "eda"): edf.Signal("EDA", 64.0, "", x)}, 4, ["eda"])
  assert h.signals["eda"].shape == (1, 4 * 30 * 32) and h.epoch_mask["eda"].all()
  assert h.stats["eda"]["method"] == ["robust"]
  assert "below the 16 Hz eda needs" in qc.check_rate(8.0, "eda")


def test_wearables_are_canonical_and_prepare():
  """PPG is a waveform (band-passed, scaled per recording); actigraphy a level in g (1 g: still)."""
  assert CANONICAL["ppg"].rate == 64 and not CANONICAL["ppg"].level
  acc = CANONICAL["actigraphy"]
  assert acc.level and acc.unit == "g" and acc.samples_per_epoch == 960
  g, note = channels.to_canonical_unit(np.array([1000.0, 9.80665]), "mg", "actigraphy")
  assert note is None and g[0] == 1.0
  t128, t50 = np.arange(4 * 30 * 128) / 128.0, np.arange(4 * 30 * 50) / 50.0
  ppg = np.sin(2 * np.pi * 1.1 * t128) + 0.3 * np.sin(2 * np.pi * 0.02 * t128)
  acc_g = 1.0 + 0.05 * (t50 > 60) * np.sin(2 * np.pi * 2 * t50)  # still, then moving
  h = harmonise.harmonise({("ppg", "ppg"): edf.Signal("Pleth", 128.0, "", ppg),
                           ("actigraphy", "magnitude"): edf.Signal("Accel", 50.0, "g", acc_g)},
                          4, ["ppg", "actigraphy"])
  assert h.signals["ppg"].shape == (1, 4 * 30 * 64) and h.epoch_mask["ppg"].all()
  x = h.signals["actigraphy"]
  assert x.shape == (1, 4 * 30 * 32) and h.epoch_mask["actigraphy"].all()
  assert np.abs(x[0, :60 * 32]).max() < 1e-6  # still: (|a| - 1 g) / 0.1 g = 0
  assert np.abs(x[0, 61 * 32:]).max() > 0.3
