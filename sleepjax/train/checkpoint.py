"""Orbax checkpoints: train state, Grain iterator state, the full config and run metadata.

The config saved with a checkpoint is the truth about the model: a resume that would change what
the run means (model shape, modalities, global batch, window, sampling, seed) is refused with the
differing keys listed, and evaluation rebuilds the model from the saved config.

Every restore (train, eval, `sleepjax.api.load`, captions, sweeps) picks its step through
`restore_newest`: a checkpoint that does not read (a file cut short by a torn write on network
storage) is skipped for the newest older one that does, with a warning naming it and why; an
explicitly requested step is never swapped for another.
"""

import contextlib
import functools
import json
from typing import Callable, TypeVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
# Orbax 0.12 exports no public name for the store its default array handler keeps.
from orbax.checkpoint._src.metadata import array_metadata_store

from sleepjax import config_tools
from sleepjax.config_tools import storage_path

T = TypeVar("T")

# Keys (or key prefixes) that define shapes or the data a run sees: a resume may not change them.
FROZEN_KEYS = ("model", "objective", "data.modalities", "data.global_batch", "data.window_epochs",
               "data.modality_sampling", "data.pair_weights", "data.modality_dropout",
               "data.min_modalities", "data.caption_len", "data.gain_augment", "seed")
# Model keys that change how a step computes, not what the parameters are: free to change on resume
# and taken from the command line by `eval` (e.g. evaluating a bf16/cuDNN-trained model on a CPU).
RUNTIME_MODEL_KEYS = ("dtype", "residual_dtype", "attention", "remat")
# What `eval` takes from its own command line; everything else comes from the checkpoint's config.
EVAL_SIDE_KEYS = ("eval", "mesh", "data.dir", "data.global_batch", "data.read_threads",
                  "data.prefetch", "data.workers", "data.verify_shards")


class NonFiniteStateError(RuntimeError):
  """A state with non-finite parameters was about to be checkpointed."""


class UnreadableCheckpointError(ValueError):
  """A checkpoint step that does not restore (e.g. a file cut short by a torn write)."""


def _one_line(e: BaseException) -> str:
  """The innermost cause of `e` on one line (Orbax wraps TensorStore's precise message)."""
  while (inner := e.__cause__ or (None if e.__suppress_context__ else e.__context__)) is not None:
    e = inner
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _not_json(step_dir) -> list[str]:
  """The files of a step that should hold JSON but do not parse: Orbax's own errors name none.

  Skipped: OCDBT's binary B-tree nodes and array data (`*.ocdbt`, `d/`), and the commit markers.
  """
  def files(folder):  # epath lists level by level (no rglob on cloud storage)
    for p in folder.iterdir():
      yield from files(p) if p.is_dir() else (p,)

  bad = []
  for path in sorted(files(step_dir) if step_dir.is_dir() else ()):
    if (not path.is_file() or path.suffix == ".ocdbt" or path.parent.name == "d"
        or path.name == "commit_success.txt"):
      continue
    try:
      json.loads(path.read_bytes())
    except ValueError:
      bad.append(str(path.relative_to(step_dir)))
  return bad


@contextlib.contextmanager
def reading(directory, step: int):
  """Turns any failure inside into `UnreadableCheckpointError` naming the step's directory, its
  files that are not valid JSON, and the underlying error on one line."""
  try:
    yield
  except UnreadableCheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a torn file surfaces as anything)
    step_dir = storage_path(directory) / str(step)
    torn = _not_json(step_dir)
    where = f" ({', '.join(torn)}: not valid JSON, cut short?)" if torn else ""
    raise UnreadableCheckpointError(f"{step_dir}{where}: {_one_line(e)}") from e


def all_steps(directory) -> list[int]:
  """The steps saved in `directory` (as Orbax lists them), oldest first."""
  if not storage_path(directory).is_dir():
    return []
  with ocp.CheckpointManager(storage_path(directory)) as manager:
    return sorted(manager.all_steps())


def _everywhere(ok: bool) -> bool:
  """True if every process read its part: all processes then agree on the step they restore
  (a torn per-process file fails on one process only)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(jnp.int32(ok)).all())


def _read_agreed(directory, read: Callable[[int], T], step: int) -> T:
  try:
    out, error = read(step), None
  except UnreadableCheckpointError as e:
    out, error = None, e
  if not _everywhere(error is None):
    raise error or UnreadableCheckpointError(
        f"{storage_path(directory)}/{step}: another process could not read its part")
  return out


def restore_newest(directory, read: Callable[[int], T], step: int | None = None, *,
                   choose: str = "step=<step>") -> tuple[T, int] | None:
  """(read(step), step) for `step` if given, else for the newest step in `directory` that reads;
  None when there is no checkpoint at all.

  The one path by which every restore picks its step. `read` raises `UnreadableCheckpointError`
  (wrap its reads in `reading`) for a checkpoint that does not restore: an older one is tried,
  with a warning naming the one skipped and why; any other error (a refused resume) propagates.
  An explicit `step` is never swapped for another: its error is raised. `choose` names how the
  caller picks a step (its flag), for the error when none restores.
  """
  steps = all_steps(directory)
  if step:
    if step not in steps:
      raise FileNotFoundError(f"{storage_path(directory)}/{step}: no such checkpoint (saved "
                              f"steps: {steps or 'none'})")
    return _read_agreed(directory, read, step), step
  failures = []
  for candidate in reversed(steps):
    try:
      return _read_agreed(directory, read, candidate), candidate
    except UnreadableCheckpointError as e:
      failures.append(str(e))
      logging.warning("checkpoint does not restore, trying an older one (nothing deleted): %s", e)
  if not failures:
    return None
  raise UnreadableCheckpointError(
      f"{storage_path(directory)}: no checkpoint restores; tried steps "
      f"{', '.join(map(str, reversed(steps)))}: " + "; ".join(failures) + ". Restore one "
      f"explicitly with {choose} to see its error alone, repair or move them, or start afresh "
      "in a new --workdir.")


@functools.cache
def _one_writer_per_array():
  """Orbax's replica-parallel save (on by default off GPU) splits every replicated array into one
  slice per device so that processes holding replicas write a part each. With one process it buys
  nothing and costs a sliced device-to-host copy per device and leaf (8 x 276 leaves at the tiny
  preset: 2.2 CPU-s a save against 0.8, BENCHMARKS.md "The test suite"), so a single-process run
  writes each array from one replica. Orbax's handler table is process-wide: set once, where
  saving starts (Orbax logs the override once)."""
  if jax.process_count() == 1:
    # Orbax's default handler otherwise (its array-metadata store: the same files on disk).
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
                                            override=True)


def make_manager(directory: str, config) -> ocp.CheckpointManager:
  _one_writer_per_array()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints,
      save_interval_steps=config.train.checkpoint_every,
      enable_async_checkpointing=True, create=True,
      # a flat bucket through gcsfuse cannot rename the temporary step directory: Orbax then
      # writes in place and marks completion with a commit file
      temporary_path_class=(ocp.path.atomicity.CommitFileTemporaryPath
                            if config.train.checkpoint_commit_file else None))
  return ocp.CheckpointManager(storage_path(directory), options=options)


_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    or [jnp.bool_(True)])))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, config, *, meta=None,
         force=False) -> bool:
  """Saves at the manager's interval (or `force`); never a state whose parameters are not finite.

  Every checkpoint on disk is finite, so `keep_checkpoints` can never push out the last good one.
  """
  if not force and not manager.should_save(step):
    return False
  if not bool(_all_finite(state.params)):
    raise NonFiniteStateError(
        f"step {step}: parameters are not finite; not checkpointing (last checkpoint: step "
        f"{manager.latest_step()})")
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter),
      config=ocp.args.JsonSave(config.to_dict()),
      meta=ocp.args.JsonSave(meta or {})), force=force)


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
  """Restores onto the shardings carried by `abstract_state` (any topology); the iterator in place.

  The state first: a checkpoint whose state does not read leaves the iterator untouched.
  """
  if data_iter is not None:
    check_process_count(manager, step)
  with reading(manager.directory, step):
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]
  if data_iter is not None:
    with reading(manager.directory, step):
      manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iter)))
  return state


def set_aside(manager: ocp.CheckpointManager, step: int) -> list[str]:
  """Moves the checkpoints newer than `step` (the resume point) to <directory>/skipped/<step>,
  untouched, so the run can save those steps again (Orbax refuses a step it already lists, and
  keep-N would count them); Orbax neither lists nor deletes what is there. Returns the new paths.
  """
  newer = [s for s in manager.all_steps() if s > step]
  if not newer:
    return []
  root = manager.directory / "skipped"
  targets = []
  for s in newer:
    target, k = root / str(s), 1
    while target.exists():  # the same step skipped before: keep both
      k += 1
      target = root / f"{s}.{k}"
    targets.append(target)
  if jax.process_index() == 0:
    root.mkdir(parents=True, exist_ok=True)
    for s, target in zip(newer, targets):
      (manager.directory / str(s)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("sleepjax: newer checkpoints set aside")
  manager.reload()
  logging.warning("resuming from step %d: the newer checkpoints %s moved to %s (not deleted)",
                  step, newer, root)
  return [str(t) for t in targets]


def _read_json(directory, step: int, item: str) -> dict | None:
  path = storage_path(directory) / str(step) / item / "metadata"
  if not path.exists():
    return None
  with reading(directory, step):
    return json.loads(path.read_text())


def saved_config(directory, step: int) -> dict | None:
  """The config dict saved with checkpoint `step` (None for checkpoints that carry none); keys an
  older checkpoint lacks filled from its family's preset (`config_tools.from_dict`)."""
  saved = _read_json(directory, step, "config")
  return None if saved is None else config_tools.from_dict(saved).to_dict()


def check_split_hash(directory, step: int, manifest: dict, allow_mismatch: bool = False):
  """Refuses to evaluate a checkpoint on data whose subject splits differ from those it trained on
  (a re-prepared cohort could put training subjects in test); `allow_mismatch` only warns."""
  trained = saved_meta(directory, step).get("split_hash")
  current = manifest.get("split_hash")
  if trained is None or current is None or trained == current:
    return
  message = (f"{manifest.get('dir', 'the data')}: split hash {current[:12]} differs from the one "
             f"checkpoint {step} trained on ({trained[:12]}): its test subjects may include "
             "training subjects. Evaluate on the data it was trained on, or pass "
             "--config.eval.allow_split_mismatch=true to evaluate anyway.")
  if allow_mismatch:
    logging.warning(message)
    return
  raise ValueError(message)


def saved_meta(directory, step: int) -> dict:
  """Run metadata saved with checkpoint `step`: schedule segments, skipped-update counts."""
  return _read_json(directory, step, "meta") or {}


def _normalise(v):
  """JSON round trip: tuples become lists, so saved and live values compare equal."""
  return json.loads(json.dumps(v, sort_keys=True, default=str))


def _frozen(key: str) -> bool:
  if key.startswith("model.") and key.split(".", 1)[1] in RUNTIME_MODEL_KEYS:
    return False
  return any(key == k or key.startswith(k + ".") for k in FROZEN_KEYS)


def config_diff(saved: dict, current: dict) -> dict[str, tuple]:
  """{key: (saved, current)} for the shape- or data-defining keys that differ."""
  a, b = config_tools.flatten(_normalise(saved)), config_tools.flatten(_normalise(current))
  return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
          if _frozen(k) and a.get(k, "<absent>") != b.get(k, "<absent>")}


def check_resume_config(saved: dict | None, config, where: str):
  """Refuses a resume that changes what the run means, unless `train.allow_config_change`."""
  if saved is None:
    return
  diff = config_diff(saved, config.to_dict())
  if not diff:
    return
  listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
  if config.train.allow_config_change:
    logging.warning("resuming %s with changed keys (train.allow_config_change): %s", where, listing)
    return
  raise ValueError(
      f"{where} was trained with another configuration; a resume may not change {listing}. "
      "Use a new --workdir, or pass --config.train.allow_config_change=true to resume anyway.")


def _set(config: ml_collections.ConfigDict, key: str, value):
  *path, last = key.split(".")
  node = config
  for p in path:
    node = node[p]
  node[last] = value


def _get(config, key: str):
  node = config
  for p in key.split("."):
    node = node[p]
  return node


def config_for_eval(config, directory: str, step: int | None = None):
  """The checkpoint's own config, with the command line's eval-side keys (and runtime model keys).

  Evaluation needs no model flags: the architecture comes from the checkpoint.
  """
  with ocp.CheckpointManager(storage_path(directory)) as manager:
    step = manager.latest_step() if step is None else step
  saved = None if step is None else saved_config(directory, step)
  if saved is None:
    return config
  merged = config_tools.from_dict(saved)
  for key in EVAL_SIDE_KEYS + tuple(f"model.{k}" for k in RUNTIME_MODEL_KEYS):
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue
    value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    _set(merged, key, ml_collections.ConfigDict(value) if isinstance(value, dict) else value)
  # Keys the current code knows but an older checkpoint lacks keep the command line's defaults.
  for key, value in config_tools.flatten(config.to_dict()).items():
    try:
      _get(merged, key)
    except (KeyError, AttributeError):
      try:
        _set(merged, key, value)
      except (KeyError, AttributeError):
        pass
  return merged


def restore_params(directory: str, abstract_state, step: int | None = None,
                   field: str | None = None, *, choose: str = "step=<step>"):
  """(parameters, step): `field` (default: EMA parameters when the state has them) of the given
  checkpoint, else of the newest that restores (`restore_newest`).

  Only the parameter arrays are read: the optimizer state is never restored for evaluation.
  """
  name = field or (
      "ema_params" if getattr(abstract_state, "ema_params", None) is not None else "params")
  target = {name: getattr(abstract_state, name)}

  def read(s: int):
    with ocp.CheckpointManager(storage_path(directory)) as manager, reading(directory, s):
      return manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"][name]

  found = restore_newest(directory, read, step, choose=choose)
  if found is None:
    raise FileNotFoundError(f"{directory}: no checkpoint found")
  return found
