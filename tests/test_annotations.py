import numpy as np
import pytest

from data_prep import annotations
from sleepjax.modalities import EVENTS

XML = """<?xml version="1.0" encoding="UTF-8"?>
<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents>
<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start><Duration>300</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Wake|0</EventConcept><Start>0.0</Start><Duration>60.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 2 sleep|2</EventConcept><Start>60.0</Start><Duration>30.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 4 sleep|4</EventConcept><Start>90.0</Start><Duration>60.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>REM sleep|5</EventConcept><Start>150.0</Start><Duration>30.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>Obstructive apnea|Obstructive Apnea</EventConcept><Start>95.5</Start><Duration>12</Duration></ScoredEvent>
<ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>Arousal|Arousal ()</EventConcept><Start>100</Start><Duration>5</Duration></ScoredEvent>
</ScoredEvents></PSGAnnotation>"""


def test_nsrr_stages_and_events(tmp_path):
  path = tmp_path / "a.xml"
  path.write_text(XML)
  stages, events = annotations.read_nsrr_xml(path, n_epochs=8)
  # R&K stage 4 becomes N3; epochs after the last scored one are unknown.
  np.testing.assert_array_equal(stages, [0, 0, 2, 3, 3, 4, -1, -1])
  assert [e.kind for e in events] == ["apnea", "arousal"]
  raster = annotations.event_raster(events, 8)
  apnea, arousal = 1 << EVENTS.index("apnea"), 1 << EVENTS.index("arousal")
  flat = raster.reshape(-1)
  assert (flat[95:108] & apnea).all() and not (flat[108:] & apnea).any() and not flat[94] & apnea
  assert (flat[100:105] & arousal).all() and (flat & arousal).sum() == 5 * arousal


def test_malformed_xml_names_the_file(tmp_path):
  path = tmp_path / "broken.xml"
  path.write_text("<PSGAnnotation><ScoredEvents>")
  with pytest.raises(ValueError, match="broken.xml"):
    annotations.read_nsrr_xml(path, 4)
