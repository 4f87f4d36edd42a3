"""SleepLM captions from checkpoints: a night through `sleepjax.api`, a recording of the
prepared data beside its reference captions (`sleepjax caption`). Decoding itself is
`sleepjax.models.sleeplm.decode`."""

import jax
import numpy as np
from flax import nnx

from sleepjax.models.sleeplm.decode import caption_epochs


def caption_night(api_model, signals: dict, masks: dict, *, group: str = "stage_event",
                  max_len: int = 48, beams: int = 1) -> list[dict[str, str]]:
  """`sleepjax.api.Model.caption`: one {group: text} per epoch of a prepared night."""
  tokenizer = tokenizer_of(api_model.config, api_model.workdir)
  model = nnx.merge(api_model.graphdef, jax.device_get(api_model.params))
  return caption_epochs(model, tokenizer, signals, masks, group, max_len=max_len, beams=beams)


def tokenizer_of(config, workdir):
  """The caption tokenizer of a checkpoint's data (`data.dir`, else <workdir>/data)."""
  import os  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(config.data.dir or os.path.join(str(workdir), "data"))
  return CaptionTokenizer(os.path.join(manifest["dir"], manifest["tokenizer"]["path"]))


def restore_model(config, workdir: str):
  """(config, SleepLM model on the host, manifest, tokenizer, step) of checkpoint
  `eval.checkpoint_step`, else of the newest that restores, through the one restore path
  (`sleepjax.train.restore`): the model and the returned config are the checkpoint's own (the
  command line gives only eval-side keys: any other model key on it is ignored); the data's split
  hash must be the one the checkpoint trained on."""
  import os  # pylint: disable=g-import-not-at-top
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  from sleepjax.train import restore  # pylint: disable=g-import-not-at-top
  r = restore.restore_workdir(config, workdir)
  family = r.config.model.family
  if family != "sleeplm":
    raise ValueError(f"captions need a SleepLM checkpoint (model.family='sleeplm'); the one in "
                     f"{workdir} is model.family={family!r}")
  if "tokenizer" not in r.manifest:
    raise ValueError(f"{r.manifest['dir']}: no caption tokenizer; run `sleepjax caption-tokenizer`")
  tokenizer = CaptionTokenizer(os.path.join(r.manifest["dir"], r.manifest["tokenizer"]["path"]))
  return (r.config, nnx.merge(r.graphdef, jax.device_get(r.params)), r.manifest, tokenizer,
          r.step)


def recording_records(manifest: dict, recording: str | None) -> tuple[str, list]:
  """(recording id, its decoded records in epoch order); default: the first test recording."""
  from data_prep import writer  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import shard_paths  # pylint: disable=g-import-not-at-top
  if recording is None:
    recording = sorted(manifest["splits"]["test"]["recordings"])[0]
  if recording not in manifest["recordings"]:
    raise ValueError(f"recording {recording!r} is not in {manifest['dir']} "
                     f"(e.g. {', '.join(sorted(manifest['recordings'])[:3])})")
  found = []
  for split in manifest["splits"]:
    if recording not in manifest["splits"][split].get("recordings", [recording]):
      continue
    for path in shard_paths(manifest, split):
      for rec in writer.read_records(path):
        arrays, meta = records.decode(rec)
        if meta["recording_id"] == recording:
          found.append((meta["first_epoch"], arrays))
  return recording, [a for _, a in sorted(found, key=lambda x: x[0])]


def caption_recording(config, workdir: str, recording: str | None = None) -> dict:
  """Generated captions of one recording's epochs beside their reference captions: every
  `eval.caption_stride`-th epoch from the first, `eval.caption_epochs` of them (0 = all)."""
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  config, model, manifest, tokenizer, step = restore_model(config, workdir)
  recording, recs = recording_records(manifest, recording)
  names = [m for m in config.prep.modalities if f"sig/{m}" in recs[0]]
  signals = {m: np.concatenate([a[f"sig/{m}"] for a in recs]) for m in names}
  masks = {m: np.concatenate([a[f"mask/{m}"] for a in recs]) for m in names}
  n = len(masks[names[0]])
  epochs = list(range(0, n, max(int(config.eval.caption_stride), 1)))
  epochs = epochs[:config.eval.caption_epochs or None]
  refs = {}
  for a in recs:
    for g, texts in records.texts(a["captions"]).items():
      refs.setdefault(g, []).extend(texts)
  generated = caption_epochs(model, tokenizer, signals, masks, config.eval.caption_group,
                             max_len=config.eval.max_caption_len, beams=config.eval.beams,
                             chunk=int(config.prep.segment_epochs), epochs=epochs)
  rows = [{"epoch": e, "group": g, "generated": text, "reference": refs[g][e]}
          for e, per in zip(epochs, generated) for g, text in per.items()]
  return {"recording": recording, "checkpoint_step": step, "rows": rows}


def format_captions(report: dict) -> str:
  lines = [f"captions of {report['recording']} (checkpoint step {report['checkpoint_step']}); "
           "gen = generated, ref = reference"]
  for r in report["rows"]:
    lines.append(f"epoch {r['epoch']:>4} {r['group']:<12} gen: {r['generated']}")
    lines.append(f"{'':<23} ref: {r['reference']}")
  return "\n".join(lines)

