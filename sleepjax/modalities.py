"""Canonical modalities: name -> sampling rate and channels.

Shared by `data_prep` (what records hold) and the models (what tokenizers expect). A run may use any
subset; the manifest records which modalities, rates and channels its shards hold.
"""

import dataclasses

EPOCH_SECONDS = 30
STAGES = ("W", "N1", "N2", "N3", "REM")  # stage codes 0..4; -1 = unknown / unscored
UNKNOWN_STAGE = -1
EVENTS = ("apnea", "hypopnea", "desaturation", "arousal", "limb_movement")  # bit k of the raster


@dataclasses.dataclass(frozen=True)
class Modality:
  rate: int  # Hz
  channels: tuple[str, ...]
  unit: str

  @property
  def samples_per_epoch(self) -> int:
    return self.rate * EPOCH_SECONDS


# sleep2vec's nine pretraining modalities (defaults; all configurable through the manifest).
CANONICAL = {
    "eeg": Modality(128, ("c4_m1", "c3_m2"), "uV"),
    "eog": Modality(128, ("e1", "e2"), "uV"),
    "emg": Modality(128, ("chin",), "uV"),
    "ecg": Modality(128, ("ecg",), "mV"),
    "heart_rate": Modality(4, ("hr",), "bpm"),
    "spo2": Modality(4, ("spo2",), "%"),
    "airflow": Modality(32, ("thermistor",), "a.u."),
    "nasal_pressure": Modality(32, ("pressure",), "a.u."),
    "resp_effort": Modality(32, ("thorax", "abdomen"), "a.u."),
}
