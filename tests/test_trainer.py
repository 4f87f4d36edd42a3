"""Trainer faults and bookkeeping: SIGTERM, NaN, config mismatch, eval config, schedule extension."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO


def _losses(workdir) -> dict[int, float]:
  events = EventAccumulator(str(workdir / "train" / "tb"))
  events.Reload()
  return {e.step: e.value for e in events.Scalars("loss")}


def _workdir(prepared, tmp_path, name):
  workdir = tmp_path / name
  workdir.mkdir()
  os.symlink(prepared / "data", workdir / "data")
  return workdir


def _config(tiny_config, **train):
  config = tiny_config.copy_and_resolve_references()
  config.train.log_every = 1
  config.train.checkpoint_every = 100
  for k, v in train.items():
    config.train[k] = v
  return config


def test_schedule_extension_continues_the_decay():
  from sleepjax.train import optim  # pylint: disable=g-import-not-at-top
  from sleepjax.configs import common  # pylint: disable=g-import-not-at-top
  cfg = common.get_config().optim
  cfg.lr, cfg.warmup_steps = 1.0, 2
  assert optim.extend_segments([[0, 10]], 10, 10) == [[0, 10]]
  assert optim.extend_segments([[0, 10]], 0, 20) == [[0, 20]]  # nothing trained yet: replace
  # A finished run extended: the learning rate stays at the end value, never jumps back up.
  finished = optim.make_schedule(cfg, optim.extend_segments([[0, 10]], 10, 20))
  assert np.allclose([finished(s) for s in range(10, 21)], cfg.end_lr_fraction)
  # Extended midway: continuous at the resume step, then monotonically down to the end value.
  base = optim.make_schedule(cfg, 10)
  mid = optim.make_schedule(cfg, optim.extend_segments([[0, 10]], 5, 30))
  assert np.allclose([mid(s) for s in range(6)], [base(s) for s in range(6)])
  tail = np.array([mid(s) for s in range(5, 31)])
  assert np.all(np.diff(tail) <= 1e-7) and np.isclose(tail[-1], cfg.end_lr_fraction)
  assert tail[1] > base(6)  # the rest of the decay is stretched over the longer run


def test_config_diff_lists_meaning_changing_keys(tiny_config):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  saved = tiny_config.to_dict()
  config = tiny_config.copy_and_resolve_references()
  config.data.global_batch = 32
  config.model.width = 48
  config.model.dtype = "bfloat16"  # runtime key: free to change
  config.optim.lr = 1.0  # not shape- or data-defining
  diff = checkpoint.config_diff(saved, config.to_dict())
  assert set(diff) == {"data.global_batch", "model.width"}, diff
  with pytest.raises(ValueError, match="data.global_batch: 16 -> 32; model.width: 32 -> 48"):
    checkpoint.check_resume_config(saved, config, "somewhere")
  config.train.allow_config_change = True
  checkpoint.check_resume_config(saved, config, "somewhere")


def _poison(monkeypatch, *steps, resumed_at=0):
  """The batches of `steps` reach the devices with NaN signals: the trainer's read-ahead starts at
  its resume point, so the k-th batch it copies over feeds step `resumed_at + k`."""
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  monkeypatch.undo()  # the real copy, not a previous poisoning
  to_global, reads = pipeline.to_global, [0]

  def poisoned(local, batch_sharding):
    reads[0] += 1
    if resumed_at + reads[0] in steps:
      local = {k: (v * np.nan if k.startswith("signals/") else v) for k, v in local.items()}
    return to_global(local, batch_sharding)

  monkeypatch.setattr(pipeline, "to_global", poisoned)


def test_nan_skipped_then_named_error_and_refused_resume(prepared, tiny_config, tmp_path,
                                                         monkeypatch):
  from sleepjax.train import checkpoint, hooks, trainer  # pylint: disable=g-import-not-at-top
  workdir = _workdir(prepared, tmp_path, "nan")
  # The preset's step count: its step program is already in the session's compilation cache.
  steps = tiny_config.train.steps
  config = _config(tiny_config, steps=steps)
  _poison(monkeypatch, 3)
  last = trainer.train(config, str(workdir))
  assert last["skipped_total"] == 1 and np.isfinite(last["loss"])
  assert 3 not in _losses(workdir) and {1, 2, 4, steps} <= set(_losses(workdir))
  ckpt = trainer.checkpoint_dir(str(workdir))
  assert checkpoint.saved_meta(ckpt, steps)["skipped_total"] == 1

  # K non-finite steps in a row: a named error, and no checkpoint past the last good one.
  config = _config(tiny_config, steps=steps + 4, max_nonfinite_steps=2, checkpoint_every=1)
  _poison(monkeypatch, steps + 1, steps + 2, resumed_at=steps)
  with pytest.raises(hooks.NonFiniteError, match="2 steps in a row"):
    trainer.train(config, str(workdir))
  # step `steps + 1` kept step `steps`' state; nothing was saved after it
  assert sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())[-1] == steps + 1

  # A resume that changes the global batch or the model is refused, naming the keys.
  config = _config(tiny_config, steps=steps + 4)
  config.data.global_batch = 8
  with pytest.raises(ValueError, match=r"data\.global_batch: 16 -> 8"):
    trainer.train(config, str(workdir))


def test_val_loss_every_n_steps_is_the_eval_mode_family_loss(prepared, tiny_config, tmp_path):
  """val_loss at the steps train.val_every names, equal to the family's loss (dropout off) of the
  step's parameters on the first validation batches with keys 0, 1, ... computed by hand; a sweep
  scores a run the same way (`sweep.val_loss`: the newest checkpoint's EMA parameters)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sleepjax import sweep  # pylint: disable=g-import-not-at-top
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sleepjax.families import get_family  # pylint: disable=g-import-not-at-top
  from sleepjax.train import checkpoint, hooks, trainer  # pylint: disable=g-import-not-at-top
  from sleepjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  workdir = _workdir(prepared, tmp_path, "val")
  config = _config(tiny_config, steps=5, val_every=2, val_batches=2, checkpoint_every=4)
  config.model.dropout = 0.2  # on in training, off in val_loss
  trainer.train(config, str(workdir))
  events = EventAccumulator(str(workdir / "train" / "tb"))
  events.Reload()
  logged = {e.step: e.value for e in events.Scalars("val_loss")}
  assert set(logged) == {2, 4}, logged
  swept = sweep.val_loss(config, str(workdir), max_batches=2)

  mesh, manifest, modalities, tx, _ = trainer.setup(config, str(workdir))
  _, abstract, _ = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  ckpt = trainer.checkpoint_dir(str(workdir))
  state = lambda step: jax.device_get(checkpoint.restore(checkpoint.make_manager(ckpt, config),
                                                         step, abstract))
  # The tiny cohort has no validation records: the test split stands in (as sweeps score it).
  split = "val" if manifest["splits"]["val"]["records"] else config.eval.test_split
  assert hooks.val_split(manifest, config) == split
  config.model.dropout = 0.0
  graphdef = nnx.graphdef(state_lib.build_model(config, modalities, 0))
  family = get_family(config)

  # jitted: eager, each of the loss's ops would compile on its own (most of this test's time)
  loss = jax.jit(lambda params, batch, i: family.loss(nnx.merge(graphdef, params), batch,
                                                     jax.random.key(i))[0])

  def by_hand(params, batches):
    it = iter(pipeline.make_dataset(
        manifest, split, list(modalities), window=config.data.window_epochs,
        local_batch=config.data.global_batch, seed=0, train=True, sampling="all"))
    return np.mean([float(loss(params, pipeline.nest(next(it)), i)) for i in range(batches)])

  want = by_hand(state(4).params, 2)
  assert abs(logged[4] - want) <= 1e-4 * abs(want), (logged[4], want)
  assert swept["step"] == 5 and swept["loss_split"] == split
  # A sweep reads at most as many batches as the split holds (here one or two).
  batches = min(2, -(-manifest["splits"][split]["records"] // config.data.global_batch))
  want = by_hand(state(5).ema_params, batches)
  assert abs(swept["val_loss"] - want) <= 1e-4 * abs(want), (swept["val_loss"], want)


def test_eval_config_comes_from_the_checkpoint(sleep2vec_trained, tiny_config, monkeypatch):
  """A model restores at its checkpoint's width whatever width the command line names (the shared
  tiny run, read only: width 32, 6 steps)."""
  from sleepjax.train import checkpoint, state as state_lib, trainer  # pylint: disable=g-import-not-at-top
  workdir, _ = sleep2vec_trained
  cli_config = _config(tiny_config, steps=2)  # another width, another mesh, another probe
  cli_config.model.width, cli_config.model.heads = 48, 4
  cli_config.mesh = {"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": -1}
  cli_config.eval.probe_steps = 7
  merged = checkpoint.config_for_eval(cli_config, trainer.checkpoint_dir(str(workdir)))
  assert tiny_config.model.width == 32 and tiny_config.train.steps == 6
  assert merged.model.width == 32 and merged.eval.probe_steps == 7 and merged.mesh.tensor == 2
  mesh, _, modalities, tx, _ = trainer.setup(merged, str(workdir))
  _, abstract, _ = state_lib.abstract_state(merged, modalities, tx, mesh, merged.seed)
  params, step = checkpoint.restore_params(trainer.checkpoint_dir(str(workdir)), abstract)
  assert step == 6
  leaves = jax.tree.leaves(params)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)

  # Evaluation's restore never reads the full state (optimizer included): only parameters, the
  # EMA ones since the state has them.
  from sleepjax.evaluate import embed  # pylint: disable=g-import-not-at-top
  def refuse(*args, **kwargs):
    raise AssertionError("eval restored the whole train state")
  monkeypatch.setattr(checkpoint, "restore", refuse)
  _, _, pretrained, _, step = embed.restore(cli_config, str(workdir))
  assert step == 6
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               pretrained.params, params)


def test_sigterm_saves_and_resume_matches_uninterrupted(prepared, tiny_config, tmp_path,
                                                       sleep2vec_trained):
  """Preempted by SIGTERM after step 2 and resumed, the run logs every step once and reaches the
  weights of the same preset trained without interruption (tests/conftest.py)."""
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  steps = tiny_config.train.steps  # the uninterrupted run's, so its step program is cached
  workdir = _workdir(prepared, tmp_path, "killed")
  proc = subprocess.Popen(
      [sys.executable, "-m", "sleepjax.cli", "train", f"--config={REPO}/configs/smoke.py:tiny",
       "--config.train.log_every=1", "--config.train.checkpoint_every=100", f"--workdir={workdir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output, deadline = [], time.time() + 1800  # a shared, loaded CPU compiles slowly
  for line in proc.stdout:  # wait until step 2 has been logged, then preempt
    output.append(line)
    if re.search(r"\[2\].*loss", line):
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "".join(output[-20:])
  rest, _ = proc.communicate(timeout=1800)
  output.append(rest)
  assert proc.returncode == 0, "".join(output)[-3000:]
  assert "SIGTERM at step" in rest and "checkpoint saved" in rest, rest[-2000:]
  saved = sorted(int(s) for s in os.listdir(workdir / "train" / "checkpoints") if s.isdigit())
  assert saved and 2 <= saved[-1] < steps, saved

  trainer.train(_config(tiny_config, steps=steps), str(workdir))  # resumes after the signal
  assert set(_losses(workdir)) == set(range(1, steps + 1))  # every step logged once
  # The same (EMA) weights as the uninterrupted run: every step saw the same batch and key.
  from sleepjax.train import restore  # pylint: disable=g-import-not-at-top
  resumed, uninterrupted = (
      jax.device_get(restore.restore(trainer.checkpoint_dir(str(w)), step=steps).params)
      for w in (workdir, sleep2vec_trained[0]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), resumed,
               uninterrupted)
