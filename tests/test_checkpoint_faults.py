"""Torn checkpoints: a file cut in half (a torn write on network storage) in each item of a
checkpoint. A restore without an explicit step falls back to the newest checkpoint that reads,
with a warning naming the one skipped; an explicit step that does not read is an error naming its
directory (and the file, where it is JSON); nothing on disk is deleted or changed."""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_trainer import _config, _losses, _workdir


class _Iterator:
  """The smallest data iterator Grain's checkpoint handler saves (get_state bytes, set_state)."""

  def __init__(self, position: int = 0):
    self.position = position

  def get_state(self) -> bytes:
    return json.dumps({"position": self.position}).encode()

  def set_state(self, state: bytes):
    self.position = json.loads(state)["position"]

  def start_prefetch(self):
    pass


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _state(step: int) -> _State:
  # Random values: OCDBT inlines small or compressible arrays into its B-tree nodes; 16 KB of
  # noise lands in a data file of its own, as a real model's weights do.
  w = jax.random.normal(jax.random.key(step), (64, 64))
  return _State(jnp.int32(step), {"w": w, "b": jnp.full((4,), float(step))})


ABSTRACT = jax.eval_shape(lambda: _state(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_config):
  """A checkpoints directory with steps 1 and 2 (state, data iterator, config, meta)."""
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
  config = _config(tiny_config, checkpoint_every=1)
  manager = checkpoint.make_manager(str(directory), config)
  for step in (1, 2):
    checkpoint.save(manager, step, _state(step), _Iterator(10 * step), config,
                    meta={"schedule": [[0, config.train.steps]], "skipped_total": step})
  manager.wait_until_finished()
  manager.close()
  return directory


def _is_btree_node(path: pathlib.Path) -> bool:
  return path.read_bytes()[:4] == b"\x0c\xdb\x20\xde"  # OCDBT's B-tree node magic


@dataclasses.dataclass(frozen=True)
class Case:
  """Files of a step (a glob under it), and whether cutting one fails each kind of restore."""
  glob: str
  resume: bool  # the trainer's: config, meta, whole state, data iterator
  evaluate: bool  # eval's: config, meta (split hash), parameters only
  params: bool  # parameters only (captions, sweeps): `restore_params`
  json: bool = False  # JSON we can name in the error (Orbax's JSONDecodeError names no file)
  keep: object = None  # a filter on the files the glob matches

  @property
  def name(self) -> str:
    return self.glob + ("" if self.keep is None else f"[{self.keep.__name__}]")


def _holds_array_bytes(path):
  return not _is_btree_node(path)


CASES = [
  # Orbax's step metadata (item handlers, commit time): read when listing steps, where Orbax logs
  # the parse error and carries on; no restore reads it.
  Case("_CHECKPOINT_METADATA", resume=False, evaluate=False, params=False),
  # Commit markers, for object stores without atomic renames; a local restore ignores them.
  Case("**/commit_success.txt", resume=False, evaluate=False, params=False),
  Case("config/metadata", resume=True, evaluate=True, params=False, json=True),
  Case("meta/metadata", resume=True, evaluate=True, params=False, json=True),
  # The Grain iterator position: the trainer's resume reads it; eval does not.
  Case("data/process_0-of-1.json", resume=True, evaluate=False, params=False, json=True),
  # The state's tree structure and array metadata, read by every restore.
  Case("state/_METADATA", resume=True, evaluate=True, params=True, json=True),
  # Saved shardings and per-array metadata: the whole-state restore checks them, the partial
  # parameter restore does not.
  Case("state/_sharding", resume=True, evaluate=False, params=False, json=True),
  Case("state/array_metadatas/process_0", resume=True, evaluate=False, params=False,
       json=True),
  # The merged OCDBT database every read goes through: its manifest and B-tree.
  Case("state/manifest.ocdbt", resume=True, evaluate=True, params=True),
  Case("state/d/*", resume=True, evaluate=True, params=True),
  # The per-process OCDBT database: its manifest and B-tree nodes are superseded by the merged
  # ones above; its data file holds the arrays' bytes.
  Case("state/ocdbt.process_0/manifest.ocdbt", resume=False, evaluate=False, params=False),
  Case("state/ocdbt.process_0/d/*", resume=False, evaluate=False, params=False,
       keep=_is_btree_node),
  Case("state/ocdbt.process_0/d/*", resume=True, evaluate=True, params=True,
       keep=_holds_array_bytes),
]


def _files(step_dir: pathlib.Path, case: Case) -> list[str]:
  paths = sorted(p for p in step_dir.glob(case.glob) if p.is_file())
  return [str(p.relative_to(step_dir)) for p in paths if case.keep is None or case.keep(p)]


def _truncate(path: pathlib.Path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _digest(directory: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _resume_read(directory, config):
  """The trainer's reads of one step (trainer.train's `resume`, without the optimizer)."""
  from sleepjax.train import checkpoint, trainer  # pylint: disable=g-import-not-at-top

  def read(step):
    _, meta = trainer._resume_plan(config, str(directory), step)  # pylint: disable=protected-access
    it = _Iterator()
    with ocp.CheckpointManager(directory) as manager:
      state = checkpoint.restore(manager, step, ABSTRACT, it)
    return state.params, (meta["skipped_total"], it.position)
  return read


def _eval_read(directory, config):
  """Eval's reads of one step (train.restore.restore's `read`, without the model setup)."""
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top

  def read(step):
    merged = checkpoint.config_for_eval(config, str(directory), step)
    checkpoint.check_split_hash(str(directory), step, {"split_hash": None})
    params, _ = checkpoint.restore_params(str(directory), ABSTRACT, step)
    return params, merged.seed
  return read


def _assert_is_step(params, step: int):
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, _state(step).params)


def test_cases_cover_every_file_of_a_checkpoint(saved):
  """A new file in Orbax's layout fails here until it has a case above."""
  step_dir = saved / "2"
  every = sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file())
  covered = sorted(f for case in CASES for f in _files(step_dir, case))
  assert covered == every
  assert [f for case in CASES if case.keep for f in _files(step_dir, case)], "no OCDBT data file"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_torn_file_falls_back_or_is_not_read(saved, tmp_path, tiny_config, case, caplog):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  config = _config(tiny_config)
  files = _files(saved / "2", case)
  assert files
  for rel in files:
    directory = tmp_path / rel.replace("/", "_")
    shutil.copytree(saved, directory)
    _truncate(directory / "2" / rel)
    before = _digest(directory)
    # The public parameter restore (captions, sweeps) without a step: the newest that reads.
    params, step = checkpoint.restore_params(str(directory), ABSTRACT)
    assert step == (1 if case.params else 2), rel
    _assert_is_step(params, step)
    for make_read, fails in ((_resume_read, case.resume), (_eval_read, case.evaluate)):
      read = make_read(directory, config)
      caplog.clear()
      with caplog.at_level(logging.WARNING):
        out, step = checkpoint.restore_newest(directory, read)
      skipped = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
      assert step == (1 if fails else 2), (rel, make_read.__name__)
      _assert_is_step(out[0], step)
      if make_read is _resume_read:
        assert out[1] == (step, 10 * step)  # the meta and iterator position of that step
      if not fails:
        assert not skipped, skipped
        assert checkpoint.restore_newest(directory, read, 2)[1] == 2
        continue
      # The warning names the skipped directory and why, on one line.
      assert len(skipped) == 1 and f"{directory / '2'}" in skipped[0], skipped
      assert "\n" not in skipped[0]
      # Asked for explicitly, the torn step is an error naming it (and the JSON file), never
      # another step.
      with pytest.raises(checkpoint.UnreadableCheckpointError) as error:
        checkpoint.restore_newest(directory, read, 2)
      assert str(directory / "2") in str(error.value)
      if case.json:
        assert f"({rel}: not valid JSON" in str(error.value), str(error.value)
    assert _digest(directory) == before, "a restore changed the checkpoint"


def test_no_checkpoint_restores_names_them_and_the_flag(saved, tmp_path, tiny_config):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  shutil.copytree(saved, directory)
  for step in (1, 2):
    _truncate(directory / str(step) / "state" / "_METADATA")
  read = _resume_read(directory, _config(tiny_config))
  with pytest.raises(checkpoint.UnreadableCheckpointError) as error:
    checkpoint.restore_newest(directory, read, choose="--config.train.resume_step=<step>")
  message = str(error.value)
  assert "tried steps 2, 1" in message and "--config.train.resume_step=<step>" in message
  assert all(f"{directory / s} (state/_METADATA: not valid JSON" in message for s in "12"), message
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    checkpoint.restore_newest(directory, read, 3)


def test_resume_from_an_older_step_sets_the_torn_one_aside_and_saves_on(saved, tmp_path,
                                                                       tiny_config):
  """Orbax saves no step it already lists, and keep-N would count the torn one: it moves, byte
  for byte, to checkpoints/skipped/, and steps 2-4 are saved anew (keep 3: step 1 collected)."""
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  shutil.copytree(saved, directory)
  _truncate(directory / "2" / "state" / "_METADATA")
  torn = _digest(directory / "2")
  config = _config(tiny_config, checkpoint_every=1, keep_checkpoints=3)
  manager = checkpoint.make_manager(str(directory), config)
  _, step = checkpoint.restore_newest(directory, _resume_read(directory, config))
  assert step == 1
  assert checkpoint.set_aside(manager, step) == [str(directory / "skipped" / "2")]
  for s in (2, 3, 4):
    assert checkpoint.save(manager, s, _state(s), _Iterator(10 * s), config,
                           meta={"schedule": [[0, config.train.steps]], "skipped_total": s})
  manager.wait_until_finished()
  manager.close()
  assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [2, 3, 4]
  assert _digest(directory / "skipped" / "2") == torn
  (params, extra), step = checkpoint.restore_newest(directory, _resume_read(directory, config))
  assert step == 4 and extra == (4, 40)
  _assert_is_step(params, 4)


# ~3.5 CPU-minutes (two tiny trainings and an eval restore); the fast tests above hold the same
# invariants on checkpoint.py's functions, this one the wiring of train, eval and api.load.
@pytest.mark.slow
def test_train_eval_and_load_skip_a_torn_newest_checkpoint(prepared, tiny_config, tmp_path, caplog):
  """End to end: eval and `api.load` restore step 1 when step 2 is torn (an explicit step 2 is an
  error); the trainer resumes from step 1, sets step 2 aside untouched and saves steps 2-4 anew."""
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  from sleepjax.evaluate import embed  # pylint: disable=g-import-not-at-top
  from sleepjax.train import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  workdir = _workdir(prepared, tmp_path, "torn")
  trainer.train(_config(tiny_config, steps=2, checkpoint_every=1), str(workdir))
  ckpt = pathlib.Path(trainer.checkpoint_dir(str(workdir)))
  _truncate(ckpt / "2" / "state" / "_METADATA")
  torn = _digest(ckpt / "2")

  with caplog.at_level(logging.WARNING):
    assert embed.restore(_config(tiny_config), str(workdir))[-1] == 1
    assert api.load(workdir).step == 1
  assert sum(f"{ckpt / '2'}" in r.getMessage() for r in caplog.records) == 2
  with pytest.raises(checkpoint.UnreadableCheckpointError, match=r"2 \(state/_METADATA"):
    api.load(workdir, step=2)
  with pytest.raises(checkpoint.UnreadableCheckpointError, match=r"2 \(state/_METADATA"):
    api.load(ckpt / "2")
  explicit = _config(tiny_config)
  explicit.eval.checkpoint_step = 2
  with pytest.raises(checkpoint.UnreadableCheckpointError, match=r"2 \(state/_METADATA"):
    embed.restore(explicit, str(workdir))

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    trainer.train(_config(tiny_config, steps=4, checkpoint_every=1), str(workdir))
  assert any(f"{ckpt / '2'}" in r.getMessage() and "does not restore" in r.getMessage()
             for r in caplog.records)
  assert _digest(ckpt / "skipped" / "2") == torn  # set aside, byte for byte
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 3, 4]
  assert api.load(workdir).step == 4
  # Step 2 trained again from step 1's state and iterator position: the same loss as before.
  events = EventAccumulator(str(workdir / "train" / "tb"))
  events.Reload()
  step2 = [e.value for e in events.Scalars("loss") if e.step == 2]
  assert len(step2) == 2 and step2[0] == pytest.approx(step2[1], rel=1e-6), step2
  assert set(_losses(workdir)) == {1, 2, 3, 4}
