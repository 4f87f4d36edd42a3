"""Sleep stage and event annotations: NSRR XML (ScoredEvents) -> per-epoch stages, per-second events."""

import dataclasses
import os
import xml.etree.ElementTree as ET

import numpy as np

from sleepjax.modalities import EPOCH_SECONDS, EVENTS, UNKNOWN_STAGE

# NSRR stage concepts ("Stage 4 sleep|4" is R&K S4, merged into N3 as AASM does).
NSRR_STAGES = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 3, "5": 4}


@dataclasses.dataclass
class Event:
  kind: str  # one of modalities.EVENTS
  onset_s: float
  duration_s: float


def _event_kind(event_type: str, concept: str) -> str | None:
  text = f"{event_type} {concept}".lower()
  if "apnea" in text:
    return "apnea"
  if "hypopnea" in text:
    return "hypopnea"
  if "desaturation" in text:
    return "desaturation"
  if "arousal" in text:
    return "arousal"
  if "limb" in text or "plm" in text:
    return "limb_movement"
  return None


def read_nsrr_xml(path: str | os.PathLike, n_epochs: int) -> tuple[np.ndarray, list[Event]]:
  """Returns stages int8 [n_epochs] (-1 where unscored) and the scored events."""
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{path}: malformed annotation XML ({e})") from e
  stages = np.full(n_epochs, UNKNOWN_STAGE, np.int8)
  events = []
  for ev in root.iter("ScoredEvent"):
    event_type = ev.findtext("EventType") or ""
    concept = ev.findtext("EventConcept") or ""
    start, duration = float(ev.findtext("Start") or 0), float(ev.findtext("Duration") or 0)
    if event_type.startswith("Stages"):
      code = concept.split("|")[-1].strip()
      first, count = int(round(start / EPOCH_SECONDS)), int(round(duration / EPOCH_SECONDS))
      stages[first:first + count] = NSRR_STAGES.get(code, UNKNOWN_STAGE)
    elif kind := _event_kind(event_type, concept):
      events.append(Event(kind, start, duration))
  return stages, events


def event_raster(events: list[Event], n_epochs: int) -> np.ndarray:
  """Per-second bitmask uint8 [n_epochs, 30]; bit k set while an event of kind EVENTS[k] is on."""
  raster = np.zeros(n_epochs * EPOCH_SECONDS, np.uint8)
  for ev in events:
    lo = max(int(np.floor(ev.onset_s)), 0)
    hi = min(int(np.ceil(ev.onset_s + ev.duration_s)), raster.size)
    raster[lo:hi] |= np.uint8(1 << EVENTS.index(ev.kind))
  return raster.reshape(n_epochs, EPOCH_SECONDS)
