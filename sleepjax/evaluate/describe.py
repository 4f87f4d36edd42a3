"""A night in sentences (`api.Model.describe`): time with signal, the minutes of each stage, sleep
efficiency and onset from the model's own stages, and for each event kind where the model's
similarity to the kind's prompt (`evaluate.search.PROMPTS`) is highest; the annotations, when the
night has them, beside it. Every number the sentences state is a `Number`: the value as written,
its text, the sentence it is in and what it was computed from, so it can be recomputed
(tests/test_describe.py does).
"""

import dataclasses

import numpy as np

from sleepjax.evaluate import search as search_lib
from sleepjax.modalities import EPOCH_SECONDS, STAGES

EPOCH_MIN = EPOCH_SECONDS / 60


@dataclasses.dataclass
class Number:
  value: float  # as stated (the text's rounding); clock times: seconds from the recording's start
  text: str  # how the sentence writes it
  sentence: int  # index into `Description.sentences`
  source: str  # what it was computed from


@dataclasses.dataclass
class Description:
  """What `Model.describe` returns."""
  sentences: list[str]
  numbers: dict[str, Number]
  stages: np.ndarray  # [E] the model's stage per epoch (STAGES codes), -1 where nothing is present
  stager: str  # "zero_shot" (signal vs stage prompts) or "head" (eval's staging head)
  searches: dict[str, search_lib.Search]  # event kind -> the search for its prompt

  @property
  def text(self) -> str:
    return " ".join(self.sentences)


class _Writer:
  """Sentences whose numbers are recorded as they are written."""

  def __init__(self, start):
    self.sentences, self.numbers, self.start = [], {}, start

  def num(self, name: str, value, fmt: str, source: str) -> str:
    text = format(value, fmt)
    self.numbers[name] = Number(float(text), text, len(self.sentences), source)
    return text

  def clock(self, name: str, epoch: int, source: str) -> str:
    offset = epoch * EPOCH_SECONDS
    text = search_lib.clock(offset, self.start)
    self.numbers[name] = Number(float(offset), text, len(self.sentences), source)
    return text

  def say(self, sentence: str):
    self.sentences.append(sentence)


def describe(stages_E, present_E, searches: dict, *, stager: str, scored_E=None, events_ExS=None,
             start=None) -> Description:
  """The description of one night from the model's stages `stages_E`, which epochs have any
  channel (`present_E`), the searches for the event prompts ({kind: Search}) and, when the night
  is annotated, its scored stages [E] (-1 unscored) and per-second event raster [E, 30]."""
  present = np.asarray(present_E, bool)
  stages = np.where(present, np.asarray(stages_E), -1)
  sleep = stages > 0
  w = _Writer(start)
  by = f"model stages ({stager})"

  n = int(present.sum())
  minutes = w.num("signal_min", n * EPOCH_MIN, ".1f", "epochs with any channel present x 0.5 min")
  epochs = w.num("signal_epochs", n, "d", "epochs with any channel present")
  w.say(f"The night has {minutes} min of signal ({epochs} epochs).")

  if sleep.any():
    first = int(np.flatnonzero(sleep)[0])
    total = w.num("sleep_min", sleep.sum() * EPOCH_MIN, ".1f", f"{by}: N1-REM epochs x 0.5 min")
    eff = w.num("sleep_efficiency_pct", 100 * sleep.sum() / n, ".1f",
                f"{by}: N1-REM epochs / epochs present x 100")
    onset = w.num("sleep_onset_min", present[:first].sum() * EPOCH_MIN, ".1f",
                  f"{by}: present epochs before the first N1-REM epoch x 0.5 min")
    at = w.clock("sleep_onset_clock", first, f"{by}: the first N1-REM epoch")
    w.say(f"The model scores {total} min as sleep, a sleep efficiency of {eff} %, with sleep "
          f"onset after {onset} min (at {at}).")
  else:
    w.say("The model scores no epoch as sleep.")
  parts = []
  for k, s in enumerate(STAGES):
    m = w.num(f"{s}_min", (stages == k).sum() * EPOCH_MIN, ".1f", f"{by}: {s} epochs x 0.5 min")
    parts.append(f"{s} {m} min")
  w.say(f"By stage: {', '.join(parts)}.")

  scored = np.full(len(stages), -1) if scored_E is None else np.asarray(scored_E)
  ok = present & (scored >= 0)
  if ok.any():
    total = w.num("scored_sleep_min", (scored[ok] > 0).sum() * EPOCH_MIN, ".1f",
                  "annotations: scored N1-REM epochs x 0.5 min")
    agree = w.num("agreement_pct", 100 * (stages[ok] == scored[ok]).mean(), ".1f",
                  f"{by} == scored stage, over scored present epochs x 100")
    w.say(f"The scored hypnogram has {total} min of sleep; the model's stage agrees with the "
          f"scored one on {agree} % of epochs.")

  annotated = None if events_ExS is None else search_lib.event_epochs(events_ExS)
  for kind, found in searches.items():
    src = f"cosine of the epoch's signal embedding with the text embedding of \"{found.text}\""
    where = []
    for i, m in enumerate(found.moments):
      at = w.clock(f"{kind}_top{i + 1}_clock", m.epoch, f"{src}: the rank-{i + 1} moment's epoch")
      sim = w.num(f"{kind}_top{i + 1}_similarity", m.similarity, ".3f", src)
      where.append(f"{at} (similarity {sim})")
    sentence = f"Asked for \"{found.text}\", the model points to {_join(where)}"
    if annotated is not None and kind in annotated:
      truth = annotated[kind] & present
      hits = w.num(f"{kind}_top_annotated", sum(bool(truth[m.epoch]) for m in found.moments),
                   "d", f"annotations: top moments' epochs with any second of {kind}")
      count = w.num(f"{kind}_annotated_epochs", int(truth.sum()), "d",
                    f"annotations: present epochs with any second of {kind}")
      sentence += (f"; annotated {kind.replace('_', ' ')}: {hits} of these, {count} epochs in "
                   "the night")
    w.say(sentence + ".")
  return Description(w.sentences, w.numbers, stages, stager, dict(searches))


def _join(items: list[str]) -> str:
  if len(items) <= 1:
    return "".join(items) or "nothing"
  return f"{', '.join(items[:-1])} and {items[-1]}"
