"""EDF / EDF+ / BDF reading through pyedflib."""

import dataclasses
import os

import numpy as np
import pyedflib


@dataclasses.dataclass
class Signal:
  label: str
  rate: float  # Hz
  unit: str
  data: np.ndarray  # [T] float64, physical units


@dataclasses.dataclass
class Recording:
  path: str
  duration_s: float
  signals: list[Signal]


def read_edf(path: str | os.PathLike) -> Recording:
  """Reads every signal of an EDF/EDF+/BDF file in physical units."""
  path = os.fspath(path)
  try:
    reader = pyedflib.EdfReader(path)
  except OSError as e:
    raise ValueError(f"{path}: cannot read as EDF/BDF ({e})") from e
  try:
    duration = float(reader.getFileDuration())
    rates = reader.getSampleFrequencies()
    signals = [
        Signal(reader.getLabel(i).strip(), float(rates[i]), reader.getPhysicalDimension(i).strip(),
               reader.readSignal(i))
        for i in range(reader.signals_in_file)
    ]
  finally:
    reader.close()
  return Recording(path, duration, signals)
