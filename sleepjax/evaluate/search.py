"""Searching a night in words (SleepLM): the cosine similarity of each epoch's signal embedding to a
text's, the top moments of a night, and the `search` eval task (for each event type and stage,
the AUROC of the similarity against the annotations, pretrained vs random init).

The prompts live here, in `PROMPTS` (the caption language: what the model was trained on) and
`PARAPHRASES` (phrasings no caption uses); edit them here and the task, `Model.search` users and
`sleepjax query` users see the same words.
"""

import dataclasses
import datetime

import numpy as np

from sleepjax.evaluate import metrics
from sleepjax.modalities import EPOCH_SECONDS, EVENTS, STAGES

# target -> prompt in the captions' own words (events: stage_event's event sentences).
PROMPTS = {
    "apnea": "Apnea throughout the epoch.",
    "hypopnea": "Hypopnea throughout the epoch.",
    "desaturation": "Oxygen desaturation throughout the epoch.",
    "arousal": "Arousal throughout the epoch.",
    "limb_movement": "Limb movement throughout the epoch.",
    "W": "Wake.", "N1": "Stage N1 sleep.", "N2": "Stage N2 sleep.", "N3": "Stage N3 sleep.",
    "REM": "REM sleep.",
}
# target -> phrasings no caption template uses (how a user might ask).
PARAPHRASES = {
    "apnea": ("obstructive apnea", "the patient stops breathing"),
    "hypopnea": ("shallow breathing", "reduced airflow"),
    "desaturation": ("oxygen drops", "low blood oxygen"),
    "arousal": ("brief awakening", "the sleeper is disturbed"),
    "limb_movement": ("leg kicks", "periodic leg movement"),
    "W": ("the patient is awake", "awake in bed"),
    "N1": ("drowsy, falling asleep", "very light sleep"),
    "N2": ("light sleep with spindles", "ordinary light sleep"),
    "N3": ("slow-wave sleep", "deep sleep"),
    "REM": ("dreaming sleep", "rapid eye movement sleep"),
}


@dataclasses.dataclass
class Moment:
  epoch: int
  similarity: float
  offset_s: float  # from the start of the recording
  clock: str  # wall-clock time of the epoch's start (offset "+hh:mm:ss" when the start is unknown)


@dataclasses.dataclass
class Search:
  """What `Model.search` returns."""
  text: str
  similarity: np.ndarray  # [E] cosine of each epoch's signal embedding with the text's; nan absent
  moments: list[Moment]


def clock(offset_s: float, start: datetime.datetime | None = None) -> str:
  if start is not None:
    return (start + datetime.timedelta(seconds=offset_s)).strftime("%H:%M:%S")
  s = int(round(offset_s))
  return f"+{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def similarity(signal_ExP: np.ndarray, text_P: np.ndarray, present_E: np.ndarray) -> np.ndarray:
  """Cosine per epoch (both sides normalised here); nan where no channel is present."""
  s = np.asarray(signal_ExP, np.float32)
  s = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-6)
  t = np.asarray(text_P, np.float32) / max(float(np.linalg.norm(text_P)), 1e-6)
  return np.where(present_E, s @ t, np.nan)


def top_moments(sim_E: np.ndarray, k: int = 5, gap: int = 1,
                start: datetime.datetime | None = None) -> list[Moment]:
  """The k most similar epochs, each at least `gap` + 1 epochs from a higher one (one moment per
  episode, not its neighbours)."""
  order = [int(e) for e in np.argsort(-np.nan_to_num(sim_E, nan=-np.inf), kind="stable")
           if not np.isnan(sim_E[e])]
  picked = []
  for e in order:
    if all(abs(e - p) > gap for p in picked):
      picked.append(e)
      if len(picked) == k:
        break
  return [Moment(e, float(sim_E[e]), e * EPOCH_SECONDS, clock(e * EPOCH_SECONDS, start))
          for e in picked]


def search(signal_ExP, present_E, text_P, text: str, *, k: int = 5, gap: int = 1,
           start=None) -> Search:
  sim = similarity(signal_ExP, text_P, present_E)
  return Search(text, sim, top_moments(sim, k, gap, start))


def targets(stage_N: np.ndarray, events_NxS: np.ndarray) -> dict[str, np.ndarray]:
  """target -> [N] bool (stage targets: the scored stage; event targets: any second of the epoch
  annotated), over STAGES and EVENTS."""
  return {**{s: stage_N == k for k, s in enumerate(STAGES)}, **event_epochs(events_NxS)}


def event_epochs(events_NxS: np.ndarray) -> dict[str, np.ndarray]:
  """event kind -> [N] bool: any second of the epoch annotated (EVENTS bits of the raster)."""
  ev = np.asarray(events_NxS).astype(np.int64)
  return {e: ((ev >> b) & 1).any(-1) for b, e in enumerate(EVENTS)}


def target_aurocs(signal_NxP, text_unit, names: list[str], truth: dict, keep_N) -> dict:
  """AUROC of the similarity to each text (rows of `text_unit`, named `names`: target or
  target/paraphrase) against its target's annotation, over the epochs `keep_N`."""
  sim = np.asarray(signal_NxP)[keep_N] @ np.asarray(text_unit).T
  out = {}
  for i, name in enumerate(names):
    y = truth[name.split("/")[0]][keep_N]
    if 0 < y.sum() < len(y):
      out[name] = metrics.auroc(y.astype(int), sim[:, i])
  return out


def search_task(ctx) -> dict:
  """For each event type and stage: the AUROC of the similarity to its prompt (and to each
  paraphrase) against the annotations of the test epochs, per encoder."""
  if ctx.config.model.family != "sleeplm":
    return {"skipped": "not a SleepLM checkpoint"}
  import os  # pylint: disable=g-import-not-at-top
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  from sleepjax.evaluate import sleeplm  # pylint: disable=g-import-not-at-top
  tokenizer = CaptionTokenizer(os.path.join(ctx.manifest["dir"], ctx.manifest["tokenizer"]["path"]))
  split = ctx.split("test")
  names = list(PROMPTS) + [f"{t}/{p}" for t, ps in PARAPHRASES.items() for p in ps]
  texts = list(PROMPTS.values()) + [p for ps in PARAPHRASES.values() for p in ps]
  out = {"split": split, "prompts": dict(PROMPTS), "paraphrases": dict(PARAPHRASES)}
  for enc in ctx.encoders:
    model = sleeplm.host_model(ctx, ctx.encoder(enc))
    table = ctx.table(enc, split)
    stage = table["stage"].reshape(-1)
    truth = targets(stage, table["events"].reshape(-1, table["events"].shape[-1]))
    signal = table["signal"].reshape(-1, table["signal"].shape[-1])
    unit = sleeplm.text_embeddings(model, tokenizer, texts, int(ctx.config.data.caption_len))
    present = table["present"].reshape(-1)
    res = target_aurocs(signal, unit, names, truth, present & (stage >= 0))
    prompt = {t: v for t, v in res.items() if "/" not in t}
    para = {t: v for t, v in res.items() if "/" in t}
    out[enc] = {"prompt": prompt, "paraphrase": para,
                "positives": {t: int(truth[t][present & (stage >= 0)].sum()) for t in PROMPTS},
                "mean_prompt_auroc": float(np.mean(list(prompt.values()))) if prompt else np.nan,
                "mean_paraphrase_auroc": float(np.mean(list(para.values()))) if para else np.nan}
  return out


TASKS = {"search": search_task}
