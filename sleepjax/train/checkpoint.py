"""Orbax checkpoints holding the train state, the Grain iterator state and the config."""

import os

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints,
      save_interval_steps=config.train.checkpoint_every,
      enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, config, *, force=False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter),
      config=ocp.args.JsonSave(config.to_dict())), force=force)


def check_process_count(manager: ocp.CheckpointManager, step: int):
  """Each process saved its own iterator position; another process count cannot resume them."""
  saved = sorted((manager.directory / str(step) / "data").glob("process_*-of-*.json"))
  counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in saved}
  if counts and counts != {jax.process_count()}:
    raise ValueError(
        f"{manager.directory / str(step)}: the data iterators were saved by {counts.pop()} "
        f"processes, this run has {jax.process_count()}; resuming a data position on another "
        "process count (elastic resume) is not supported yet. Resume with the same number of "
        "processes, or restore parameters only (`sleepjax eval`).")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter=None):
  """Restores onto the shardings carried by `abstract_state` (any topology); the iterator in place."""
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    check_process_count(manager, step)
    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**args))["state"]


def restore_params(directory: str, abstract_state, step: int | None = None, field: str = "params"):
  """Params (or another state field, e.g. "ema") of the latest (or given) checkpoint, for
  evaluation."""
  with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint found")
    return getattr(restore(manager, step, abstract_state), field), step
