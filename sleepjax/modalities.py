"""Canonical modalities: one `Modality` per modality with everything that differs between them.

Shared by `data_prep` (what records hold, how each channel is filtered, scaled and checked) and the
models (what tokenizers expect). A run may use any subset; the manifest records which modalities,
rates and channels its shards hold. Adding a modality is one `Modality` here (plus its
channel aliases in `data_prep/channel_maps/`): every field is required, so a `Modality` that leaves
one out fails when this module is imported.
"""

import dataclasses

EPOCH_SECONDS = 30
STAGES = ("W", "N1", "N2", "N3", "REM")  # stage codes 0..4; -1 = unknown / unscored
UNKNOWN_STAGE = -1
EVENTS = ("apnea", "hypopnea", "desaturation", "arousal", "limb_movement")  # bit k of the raster


@dataclasses.dataclass(frozen=True, kw_only=True)
class QCLimits:
  """A modality's quality-control thresholds (`data_prep.qc`), in canonical units."""
  min_rate: float  # Hz: lowest usable native sampling rate
  flat_run_s: float  # a run of identical values at least this long (s) is a flat line
  min_std: float | None  # an epoch's std below this is flat; None: no absolute floor
  level_range: tuple[float, float] | None  # plausible (low, high) level; None: not checked
  max_amplitude: float | None  # sustained limit on the filtered signal; None: not checked


@dataclasses.dataclass(frozen=True, kw_only=True)
class Modality:
  """A canonical modality: its samples, its filter and scaling, and its QC limits."""
  rate: int  # Hz
  channels: tuple[str, ...]
  unit: str
  band_hz: tuple[float | None, float | None] | None  # zero-phase band-pass (None edge = open);
  #   None: not filtered
  notch: bool  # may carry mains interference: notched at the detected 50/60 Hz
  fixed_scaling: tuple[float, float] | None  # a level signal (absolute values matter): normalised
  #   by this fixed (center, scale), resampled linearly, exempt from flat-fraction and clipping
  #   checks; None: a waveform, normalised per recording (median / IQR)
  qc: QCLimits

  def __post_init__(self):
    if self.band_hz is not None and len(self.band_hz) != 2:
      raise ValueError(f"band_hz must be (low, high) or None, got {self.band_hz!r}")
    if self.fixed_scaling is not None and not self.fixed_scaling[1] > 0:
      raise ValueError(f"fixed_scaling must be (center, scale > 0) or None, "
                       f"got {self.fixed_scaling!r}")

  @property
  def level(self) -> bool:
    """A level signal (SpO2, heart rate) rather than a waveform."""
    return self.fixed_scaling is not None

  @property
  def samples_per_epoch(self) -> int:
    return self.rate * EPOCH_SECONDS


# sleep2vec's nine pretraining modalities, then two wearable ones (defaults; all configurable
# through the manifest).
CANONICAL = {
    "eeg": Modality(
        rate=128, channels=("c4_m1", "c3_m2"), unit="uV", band_hz=(0.3, 35.0), notch=True,
        fixed_scaling=None, qc=QCLimits(min_rate=64.0, flat_run_s=2.0, min_std=0.5,
                                        level_range=None, max_amplitude=1000.0)),
    "eog": Modality(
        rate=128, channels=("e1", "e2"), unit="uV", band_hz=(0.3, 10.0), notch=True,
        fixed_scaling=None, qc=QCLimits(min_rate=25.0, flat_run_s=2.0, min_std=0.5,
                                        level_range=None, max_amplitude=2000.0)),
    "emg": Modality(  # low-pass = the anti-alias filter at the canonical rate's Nyquist
        rate=128, channels=("chin",), unit="uV", band_hz=(10.0, None), notch=True,
        fixed_scaling=None, qc=QCLimits(min_rate=64.0, flat_run_s=2.0, min_std=0.05,
                                        level_range=None, max_amplitude=1000.0)),
    "ecg": Modality(
        rate=128, channels=("ecg",), unit="mV", band_hz=(0.5, 40.0), notch=True,
        fixed_scaling=None, qc=QCLimits(min_rate=50.0, flat_run_s=2.0, min_std=0.002,
                                        level_range=None, max_amplitude=10.0)),
    # Level signals step and plateau: only a ten-minute identical run is a flat line.
    "heart_rate": Modality(
        rate=4, channels=("hr",), unit="bpm", band_hz=None, notch=False,
        fixed_scaling=(65.0, 15.0), qc=QCLimits(min_rate=0.2, flat_run_s=600.0, min_std=None,
                                                level_range=(30.0, 200.0), max_amplitude=None)),
    "spo2": Modality(
        rate=4, channels=("spo2",), unit="%", band_hz=None, notch=False,
        fixed_scaling=(95.0, 5.0), qc=QCLimits(min_rate=0.2, flat_run_s=600.0, min_std=None,
                                               level_range=(50.0, 100.0), max_amplitude=None)),
    "airflow": Modality(
        rate=32, channels=("thermistor",), unit="a.u.", band_hz=(0.05, 2.0), notch=False,
        fixed_scaling=None, qc=QCLimits(min_rate=4.0, flat_run_s=10.0, min_std=None,
                                        level_range=None, max_amplitude=None)),
    "nasal_pressure": Modality(
        rate=32, channels=("pressure",), unit="a.u.", band_hz=(0.05, 2.0), notch=False,
        fixed_scaling=None, qc=QCLimits(min_rate=4.0, flat_run_s=10.0, min_std=None,
                                        level_range=None, max_amplitude=None)),
    "resp_effort": Modality(
        rate=32, channels=("thorax", "abdomen"), unit="a.u.", band_hz=(0.05, 2.0), notch=False,
        fixed_scaling=None, qc=QCLimits(min_rate=4.0, flat_run_s=10.0, min_std=None,
                                        level_range=None, max_amplitude=None)),
    # Wearables. PPG: a finger/wrist photoplethysmogram, one channel; 64 Hz keeps the pulse wave
    # (fundamental 0.7-3 Hz, harmonics to ~8 Hz) with room for pulse-rate variability; band 0.5-8 Hz
    # is the usual PPG pre-filter (Allen 2007, Physiol Meas 28:R1). Arbitrary units: the amplitude
    # depends on the sensor, so it is normalised per recording like the other waveforms.
    "ppg": Modality(
        rate=64, channels=("ppg",), unit="a.u.", band_hz=(0.5, 8.0), notch=False,
        fixed_scaling=None, qc=QCLimits(min_rate=16.0, flat_run_s=10.0, min_std=None,
                                        level_range=None, max_amplitude=None)),
    # Actigraphy: the acceleration magnitude |a| in g. Human movement lies below ~12 Hz (van Hees
    # 2013, PLoS One 8:e61691; raw actigraphs record at 30-100 Hz), so 32 Hz keeps it and gives a
    # power-of-two 960 samples per epoch. A level signal: 1 g is a still wrist whatever the
    # orientation, and a still sleeper is the point (Cole-Kripke-style sleep/wake scoring reads low
    # activity as sleep), so a per-recording median/IQR would blow a quiet night's noise up.
    # Stillness is physiology: only an hour of identical samples is a flat (dead) sensor.
    "actigraphy": Modality(
        rate=32, channels=("magnitude",), unit="g", band_hz=None, notch=False,
        fixed_scaling=(1.0, 0.1), qc=QCLimits(min_rate=10.0, flat_run_s=3600.0, min_std=None,
                                              level_range=(0.0, 16.0), max_amplitude=None)),
}
