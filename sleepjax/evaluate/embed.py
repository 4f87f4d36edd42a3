"""Restore a checkpoint for evaluation and embed whole segments of a split into numpy tables.

Several processes: each reads its own slice of the split's records, all run the same number of
global batches (short slices are padded with invalid rows), the outputs come back replicated, so
every process ends with the same complete table, in an order independent of the process count.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx

from sleepjax import sharding
from sleepjax.data import pipeline
from sleepjax.families import get_family
from sleepjax.train import restore as restore_lib, state as state_lib
from sleepjax.train.trainer import check_batch

LABELS = ("stage", "events", "features", "epoch_index", "age", "sex", "site", "recording")


@dataclasses.dataclass
class Encoder:
  """What evaluation needs of a model: its graph, parameters and an embed function."""
  name: str
  graphdef: object
  params: object
  embed: object  # (model, batch) -> {"epoch": [B, W, D], optional "per_modality", "present", ...}


def embed_function(config):
  return get_family(config).embed


def restore(config, workdir: str):
  """(config, setup, pretrained Encoder, random-init Encoder, checkpoint step), through the one
  restore path (`sleepjax.train.restore.restore_workdir`): the checkpoint's own config with the
  eval-side keys as given, EMA parameters on the current mesh, the split hash checked."""
  r = restore_lib.restore_workdir(config, workdir)
  check_shown(r.config, r.modalities)
  init = state_lib.init_state(r.config, r.modalities, r.tx, r.shardings, r.config.seed)
  embed = embed_function(r.config)
  return (r.config, (r.mesh, r.manifest, r.modalities),
          Encoder("pretrained", r.graphdef, r.params, embed),
          Encoder("random_init", r.graphdef, init.params, embed), r.step)


def check_shown(config, modalities):
  """Refuses `eval.modalities` naming a modality the model was not built with (it has no
  tokenizer for it: the night would be embedded from nothing)."""
  if unknown := [m for m in config.eval.modalities if m not in modalities]:
    raise ValueError(f"eval.modalities: {unknown} not in the checkpoint's modalities "
                     f"({', '.join(modalities)}); the model has no tokenizer for them")


def shown(config, modalities, subset=None) -> list[str] | None:
  """The modalities the encoder sees: `subset` (None: every one) within `eval.modalities`."""
  if not config.eval.modalities:
    return None if subset is None else list(subset)
  return [m for m in (modalities if subset is None else subset) if m in config.eval.modalities]


def with_subset(batch: dict, modalities: list[str], subset) -> dict:
  """Keep only `subset`'s signals/masks (absent modalities: zero signal, all-False mask, for models
  that need every key)."""
  if subset is None:
    return batch
  out = dict(batch)
  for m in modalities:
    if m not in subset:
      out[f"signals/{m}"] = np.zeros_like(batch[f"signals/{m}"])
      out[f"masks/{m}"] = np.zeros_like(batch[f"masks/{m}"])
  return out


_FORWARD = {}


def _forward(encoder: Encoder, keep: tuple, out_sharding):
  """One jitted forward per (encoder graph, outputs kept, sharding): compiled once per batch shape."""
  key = (id(encoder.graphdef), encoder.embed, keep, out_sharding)
  if key not in _FORWARD:
    def forward(params, batch):
      out = encoder.embed(nnx.merge(encoder.graphdef, params), batch)
      out = {k: v for k, v in out.items() if k in keep}
      return out, {k: batch[k] for k in (*LABELS, "valid")}
    _FORWARD[key] = (encoder.graphdef, jax.jit(forward, out_shardings=out_sharding))
  return _FORWARD[key][1]


def embed_split(encoder: Encoder, manifest: dict, split: str, modalities: list[str], config, mesh,
                *, subset=None, keep=("epoch", "per_modality", "present", "z", "signal")) -> dict:
  """Every whole segment of `split`: embeddings (`keep` of what the family returns) and LABELS,
  one row per segment, ordered by (recording, first epoch). Only `subset` (None: every modality)
  within `eval.modalities` is shown to the encoder."""
  subset = shown(config, modalities, subset)
  local_batch = check_batch(config.data.global_batch, mesh)
  n_records = manifest["splits"][split]["records"]
  P, p = jax.process_count(), jax.process_index()
  n_batches = -(-(-(-n_records // P)) // local_batch)
  if not n_batches:
    return None  # an empty split (tiny cohorts): tasks fall back to defaults for val choices
  batch_sh = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)

  forward = _forward(encoder, tuple(keep), replicated)
  ds = pipeline.make_dataset(manifest, split, modalities, window=None, local_batch=local_batch,
                             seed=0, train=False, read_threads=config.data.read_threads,
                             process_index=p, process_count=P, verify=config.data.verify_shards)
  it, template, rows = iter(ds), None, []
  with jax.set_mesh(mesh):
    for _ in range(n_batches):
      local = next(it, None)
      if local is None:  # this process's slice is exhausted: an invalid batch keeps step with others
        local = {k: np.zeros_like(v) for k, v in template.items()}
        n = 0
      else:
        local = with_subset(local, modalities, subset)
        n = len(local["stage"])
        if n < local_batch:
          local = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)])
                   for k, v in local.items()}
        template = template or local
      local["valid"] = np.arange(local_batch) < n
      out, labels = jax.device_get(forward(encoder.params, pipeline.to_global(local, batch_sh)))
      rows.append({**out, **labels})
  table = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  valid = table.pop("valid")
  table = {k: v[valid] for k, v in table.items()}
  order = np.lexsort((table["epoch_index"][:, 0], table["recording"]))
  return {k: np.asarray(v[order]) for k, v in table.items()}
