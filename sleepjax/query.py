"""`sleepjax query`: search a prepared recording in words (`api.Model.search` on its shards'
arrays), print the top moments and draw the night with the similarity beneath; `--describe`: the
recording in sentences (`api.Model.describe`)."""

import os
import re

import numpy as np

from sleepjax import api, generate
from sleepjax.data.manifest import read_manifest
from sleepjax.evaluate import plots, search
from sleepjax.modalities import EVENTS, STAGES


def prepared_night(model: api.Model, workdir: str, recording: str | None) -> tuple[str, api.Night]:
  """(recording id, `Night`) of a prepared recording (default: the first test recording), its
  scored stages and annotated events from the shards."""
  manifest = read_manifest(model.config.data.dir or os.path.join(workdir, "data"))
  recording, recs = generate.recording_records(manifest, recording)
  names = [m for m in model.modalities if f"sig/{m}" in recs[0]]
  join = lambda key: np.concatenate([a[key] for a in recs])  # pylint: disable=unnecessary-lambda-assignment
  return recording, model.embed_prepared({m: join(f"sig/{m}") for m in names},
                                         {m: join(f"mask/{m}") for m in names},
                                         {"stages": join("stage"), "events": join("events")})


def describe_recording(workdir: str, recording: str | None, *, k: int = 3) -> dict:
  """`sleepjax query --describe`: `api.Model.describe` of a prepared recording."""
  model = api.load(workdir)
  recording, night = prepared_night(model, workdir, recording)
  return {"recording": recording, "step": model.step, "description": model.describe(night, k=k)}


def format_description(result: dict) -> str:
  d = result["description"]
  lines = [f"{result['recording']} (checkpoint step {result['step']}, stages: {d.stager}):"]
  lines += [f"  {s}" for s in d.sentences]
  return "\n".join(lines)


def query_recording(workdir: str, recording: str | None, text: str, *, k: int = 5,
                    out_dir: str | None = None) -> dict:
  """`sleepjax query`: where in a prepared recording `text` is (`api.Model.search` on its
  shards' arrays); a PNG (hypnogram, similarity, annotated events) in `out_dir` (default
  <workdir>/query)."""
  model = api.load(workdir)
  recording, night = prepared_night(model, workdir, recording)
  stages = night.stages
  found = model.search(night, text, k=k)
  events = search.event_epochs(night.events)
  events = {e: events[e] for e in EVENTS if events[e].any()}
  out_dir = out_dir or os.path.join(workdir, "query")
  os.makedirs(out_dir, exist_ok=True)
  slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "query"
  png = os.path.join(out_dir, f"{recording}_{slug}.png")
  title = f"{recording}: \"{text}\" (checkpoint step {model.step})"
  if not plots.search_figure(stages, STAGES, found.similarity, events, found.moments, title, png):
    png = None
  return {"recording": recording, "text": text, "step": model.step, "search": found,
          "stages": stages, "events": events, "png": png}


def format_query(result: dict) -> str:
  lines = [f"\"{result['text']}\" in {result['recording']} (checkpoint step {result['step']}): "
           "top moments by cosine similarity"]
  for m in result["search"].moments:
    stage = int(result["stages"][m.epoch])
    ev = [e for e, flags in result["events"].items() if flags[m.epoch]]
    lines.append(f"  {m.clock}  epoch {m.epoch:>4}  similarity {m.similarity:+.3f}  scored "
                 f"{STAGES[stage] if stage >= 0 else '-'}"
                 + (f", annotated: {', '.join(ev)}" if ev else ""))
  if result["png"]:
    lines.append(f"figure: {result['png']}")
  return "\n".join(lines)
