"""The one restore path for a trained model: `sleepjax eval`, `sleepjax caption`, sweeps' validation
loss and `sleepjax.api.load` all go through `restore`.

The model is rebuilt from the checkpoint's own config: a caller's config gives only its eval-side
keys (`checkpoint.EVAL_SIDE_KEYS`: eval, mesh, data location and batch) and the runtime model keys
(dtype, attention, ...); any other model key on a command line is ignored, as `sleepjax eval` has
always done, so a preset that differs from the trained one still restores the trained model.
Only the parameters are read (the EMA ones, which every train state keeps), onto the current
devices whatever topology wrote them; the step comes through `checkpoint.restore_newest` (a torn
checkpoint is skipped for the newest older one that reads). With data (a workdir), its manifest
gives the model's modalities and its split hash must match the one the checkpoint trained on.
"""

import dataclasses

import ml_collections

from sleepjax import config_tools, sharding
from sleepjax.modalities import CANONICAL
from sleepjax.train import checkpoint, optim, state as state_lib, trainer

# The mesh of a restore without a config.
DATA_PARALLEL = {"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": -1}


@dataclasses.dataclass
class Restored:
  """A checkpoint's model, parameters and what was built to restore them."""
  config: ml_collections.ConfigDict  # the checkpoint's, with the caller's eval-side keys
  graphdef: object
  params: object  # the EMA parameters, sharded over `mesh`
  step: int
  mesh: object
  modalities: dict[str, tuple[int, int]]  # name -> (rate, channels), as the model was built
  manifest: dict | None  # the data's (restored with a workdir), else None
  tx: object  # the optimizer whose state the abstract state has (for a fresh `init_state`)
  shardings: object  # of the train state on `mesh`


def _saved_config(directory, step: int) -> ml_collections.ConfigDict:
  saved = checkpoint.saved_config(directory, step)
  if saved is None:
    raise ValueError(f"{config_tools.storage_path(directory)}/{step}: no config saved with this checkpoint; "
                     "restore it with a config (`sleepjax eval --config=...`)")
  config = config_tools.from_dict(saved)
  if not config.data.modalities:  # older checkpoints: the modalities prep wrote
    with config.unlocked():
      config.data.modalities = tuple(config.prep.modalities)
  return config


def restore(directory, config=None, *, workdir: str | None = None, step: int | None = None,
            choose: str = "step=<step>") -> Restored:
  """The parameters of checkpoint `step` of `directory` (a checkpoints directory), else of the
  newest that restores; `choose` names how the caller picks a step (for errors).

  `config`: the caller's config, for its eval-side and runtime model keys (mesh included); None:
  the checkpoint's config alone, data parallel over every device. `workdir`: the data is its
  `data` (or `data.dir`): the model's modalities come from its manifest and its split hash is
  checked (`eval.allow_split_mismatch` only warns); None: the canonical modalities, no data read.
  """
  def read(s: int) -> Restored:
    if config is None:
      merged = _saved_config(directory, s)
    else:
      merged = checkpoint.config_for_eval(config, directory, s)
    if workdir is None:
      mesh = sharding.make_mesh(merged.mesh if config is not None else DATA_PARALLEL)
      manifest = None
      modalities = {m: (CANONICAL[m].rate, len(CANONICAL[m].channels))
                    for m in merged.data.modalities}
      tx, _ = optim.make_optimizer(merged.optim, merged.train.steps)
    else:
      mesh, manifest, modalities, tx, _ = trainer.setup(merged, workdir)
      checkpoint.check_split_hash(directory, s, manifest,
                                  merged.eval.allow_split_mismatch)
    graphdef, abstract, shardings = state_lib.abstract_state(merged, modalities, tx, mesh,
                                                             merged.seed)
    # Parameters only: the optimizer state is never read to use a model.
    params, _ = checkpoint.restore_params(directory, abstract, s, "ema_params")
    return Restored(merged, graphdef, params, s, mesh, modalities, manifest, tx, shardings)

  found = checkpoint.restore_newest(directory, read, step, choose=choose)
  if found is None:
    raise FileNotFoundError(f"{directory}: no checkpoint found")
  return found[0]


def restore_workdir(config, workdir: str) -> Restored:
  """`restore` for a command (`eval`, `caption`): the workdir's checkpoints and data, the step
  `eval.checkpoint_step` (0: the newest that restores)."""
  return restore(trainer.checkpoint_dir(workdir), config, workdir=workdir,
                 step=config.eval.checkpoint_step or None,
                 choose="--config.eval.checkpoint_step=<step>")
