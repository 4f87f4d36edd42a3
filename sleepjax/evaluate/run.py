"""`sleepjax eval`: restore the latest checkpoint (its own model config, EMA parameters when the
state has them) onto the current devices, embed the splits (each process its own slice), run the
tasks named by `eval.tasks` for the pretrained and a random-init encoder, write
<workdir>/eval/report.json, report.md and PNGs (process 0).
"""

import os
import time

import jax
from absl import logging

from sleepjax.config_tools import storage_path
from sleepjax.evaluate import (audit, bandpower, baselines, embed, finetune, reports, search,
                               sequence, sleeplm, tasks as tasks_lib)

ALL_TASKS = {**tasks_lib.TASKS, **audit.TASKS, **bandpower.TASKS, **sequence.TASKS,
             **baselines.TASKS, **sleeplm.TASKS, **search.TASKS, **finetune.TASKS}


def _task_names(config) -> list[str]:
  names = config.eval.tasks
  names = [names] if isinstance(names, str) else list(names)
  names = [n for part in names for n in part.split(",") if n]
  if unknown := [n for n in names if n not in ALL_TASKS]:
    raise ValueError(f"eval.tasks: unknown {unknown}; choose from {sorted(ALL_TASKS)}")
  return names


def evaluate(config, workdir: str) -> dict:
  names = _task_names(config)
  config, (mesh, manifest, modalities), pretrained, random_init, step = embed.restore(config, workdir)
  logging.info("restored step %d", step)
  encoders = {e.name: e for e in (pretrained, random_init)}

  def embed_fn(name, split, subset):
    return embed.embed_split(encoders[name], manifest, split, list(modalities), config, mesh,
                             subset=subset)

  def embed_encoder(encoder, split):
    return embed.embed_split(encoder, manifest, split, list(modalities), config, mesh,
                             keep=("epoch",))

  ctx = tasks_lib.Context(config, manifest, list(modalities), encoders, embed_fn, mesh=mesh,
                          embed_encoder=embed_encoder,
                          batches=lambda split: finetune.local_batches(ctx, split))
  report = {"checkpoint_step": step, "workdir": os.fspath(storage_path(workdir)),
            "family": config.model.family, "modalities": list(modalities),
            "eval_modalities": ctx.shown(),  # eval.modalities (checked on restore), else all
            "stages": list(tasks_lib.STAGES), "encoders": list(encoders),
            "splits": reports.split_summary(manifest), "tasks": {}, "seconds": {}}
  for name in names:
    t0 = time.perf_counter()
    report["tasks"][name] = ALL_TASKS[name](ctx)
    report["seconds"][name] = round(time.perf_counter() - t0, 2)
    logging.info("eval task %s: %.1f s", name, report["seconds"][name])
  report["headline"] = reports.headline(report)
  for enc in encoders:  # the staging numbers at the top level too (sweep reports read them there)
    if staging := report["tasks"].get("staging", {}).get(enc):
      report[enc] = {k: staging[k] for k in ("macro_f1", "kappa", "accuracy", "epochs")}
  if jax.process_index() == 0:
    reports.write(report, os.path.join(workdir, "eval"))
    if head := ctx.artifacts.get("staging_head/pretrained"):
      from sleepjax import api  # pylint: disable=g-import-not-at-top
      api.save_staging_head(os.path.join(workdir, api.STAGING_HEAD), step=step, **head)
  return report


def format_report(report: dict) -> str:
  return reports.headline_text(report)
