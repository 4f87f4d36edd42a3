"""`sleepjax eval`: restore the latest checkpoint onto the current devices, embed held-out subjects,
fit a linear sleep-staging probe on training subjects, compare against a randomly initialised encoder.
"""

import json
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from sleepjax import sharding
from sleepjax.data import pipeline
from sleepjax.evaluate import metrics
from sleepjax.evaluate.probe import fit_linear_probe
from sleepjax.families import get_family
from sleepjax.modalities import STAGES
from sleepjax.train import checkpoint, state as state_lib
from sleepjax.train.trainer import check_batch, setup, train_dir


def _pad(local: dict, size: int) -> tuple[dict, int]:
  n = len(local["stage"])
  return {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) if n < size else v
          for k, v in local.items()}, n


def embed_split(graphdef, params, manifest, split, modalities, config, mesh):
  """Fused per-epoch embeddings [N, D] and stages [N] of every whole segment in `split`."""
  local_batch = check_batch(config.data.global_batch, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  family = get_family(config)
  forward = jax.jit(lambda p, b: family.embed(nnx.merge(graphdef, p), b)["epoch"],
                    out_shardings=sharding.replicated(mesh))
  ds = pipeline.make_dataset(manifest, split, modalities, window=None, local_batch=local_batch,
                             seed=0, train=False, read_threads=config.data.read_threads)
  embeddings, stages = [], []
  with jax.set_mesh(mesh):
    for local in ds:
      local, n = _pad(local, local_batch)
      fused_BxWxD = np.asarray(forward(params, pipeline.to_global(local, batch_sh)))[:n]
      embeddings.append(fused_BxWxD.reshape(-1, fused_BxWxD.shape[-1]))
      stages.append(local["stage"][:n].reshape(-1))
  return np.concatenate(embeddings), np.concatenate(stages).astype(np.int64)


def probe_report(graphdef, params, manifest, modalities, config, mesh) -> dict:
  x_train, y_train = embed_split(graphdef, params, manifest, config.eval.train_split, modalities,
                                 config, mesh)
  x_test, y_test = embed_split(graphdef, params, manifest, config.eval.test_split, modalities,
                               config, mesh)
  predict = fit_linear_probe(x_train, y_train, len(STAGES), steps=config.eval.probe_steps,
                             lr=config.eval.probe_lr, l2=config.eval.probe_l2, seed=config.seed)
  y_pred = predict(x_test)
  k = len(STAGES)
  return {"macro_f1": metrics.macro_f1(y_test, y_pred, k),
          "kappa": metrics.cohen_kappa(y_test, y_pred, k),
          "accuracy": metrics.accuracy(y_test, y_pred),
          "train_epochs": int((y_train >= 0).sum()), "test_epochs": int((y_test >= 0).sum()),
          "confusion": metrics.confusion(y_test, y_pred, k).tolist()}


def evaluate(config, workdir: str) -> dict:
  """Probe on the latest checkpoint vs. on the same architecture at initialisation."""
  # The architecture comes from the checkpoint's own config; the command line only sets eval keys.
  config = checkpoint.config_for_eval(config, os.path.join(train_dir(workdir), "checkpoints"))
  mesh, manifest, modalities, tx, _ = setup(config, workdir)
  graphdef, abstract, shardings = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  init_params = state_lib.init_state(config, modalities, tx, shardings, config.seed).params
  # The EMA of the weights when the state has one (sleep2vec evaluates its EMA).
  params, step = checkpoint.restore_params(os.path.join(train_dir(workdir), "checkpoints"), abstract,
                                           field="ema_params" if hasattr(abstract, "ema_params") else "params")
  logging.info("restored step %d", step)
  names = list(modalities)
  report = {
      "checkpoint_step": step, "test_subjects": manifest["splits"][config.eval.test_split]["subjects"],
      "stages": list(STAGES),
      "pretrained": probe_report(graphdef, params, manifest, names, config, mesh),
      "random_init": probe_report(graphdef, init_params, manifest, names, config, mesh),
  }
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def format_report(report: dict) -> str:
  lines = [f"linear-probe sleep staging on held-out subjects {', '.join(report['test_subjects'])} "
           f"(checkpoint step {report['checkpoint_step']})",
           f"{'encoder':<14}{'macro-F1':>10}{'kappa':>8}{'acc':>8}"]
  for name in ("pretrained", "random_init"):
    r = report[name]
    lines.append(f"{name:<14}{r['macro_f1']:>10.3f}{r['kappa']:>8.3f}{r['accuracy']:>8.3f}")
  return "\n".join(lines)
