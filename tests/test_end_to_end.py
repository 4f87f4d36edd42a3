"""prep -> train -> resume -> restore in a separate `sleepjax eval` process, at tiny size."""

import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO


def _cli(*args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "sleepjax.cli", *args, f"--config={REPO}/configs/smoke.py:tiny",
       f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO, check=False)


def test_train_resume_eval(prepared, tiny_config, tmp_path, sleep2vec_trained):
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path
  os.symlink(prepared / "data", workdir / "data")
  config = tiny_config.copy_and_resolve_references()
  config.train.steps = 6
  config.train.stop_after_steps = 4  # as if the job were preempted after step 4
  first = trainer.train(config, str(workdir))
  assert first["loss"] > 0
  assert sorted(os.listdir(workdir / "train" / "checkpoints"))[-1] == "4"
  config.train.stop_after_steps = 0
  trainer.train(config, str(workdir))  # same workdir: resumes at step 4, finishes at 6
  events = EventAccumulator(str(workdir / "train" / "tb"))
  events.Reload()
  steps = [e.step for e in events.Scalars("loss")]
  assert steps == sorted(set(steps)) and steps[-1] == 6 and 4 in steps  # no step logged twice

  # The resumed run saw exactly the batches, and reached the same weights, as an uninterrupted one
  # (this config, the tiny preset, trained once in tests/conftest.py).
  assert config.to_dict() == tiny_config.to_dict()
  straight = sleep2vec_trained[0]
  events_straight = EventAccumulator(str(straight / "train" / "tb"))
  events_straight.Reload()
  resumed_loss = {e.step: e.value for e in events.Scalars("loss")}
  straight_loss = {e.step: e.value for e in events_straight.Scalars("loss")}
  assert set(resumed_loss) == set(straight_loss)
  for step, loss in straight_loss.items():
    assert abs(resumed_loss[step] - loss) <= 1e-6 * abs(loss), (step, resumed_loss[step], loss)

  # Extending a finished run: a longer schedule continues from the last checkpoint.
  config.train.steps = 7
  trainer.train(config, str(workdir))
  assert sorted(os.listdir(workdir / "train" / "checkpoints"), key=int)[-1] == "7"

  # Trained on a data-parallel mesh of 8; restored onto a (data 2, fsdp 2, tensor 2) mesh.
  result = _cli("eval", "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                workdir=workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "pretrained" in result.stdout and "random_init" in result.stdout
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["checkpoint_step"] == 7
  for name in ("pretrained", "random_init"):
    staging = report["tasks"]["staging"][name]
    assert 0.0 <= staging["macro_f1"] <= 1.0 and staging["epochs"] > 0


def test_cli_errors_are_one_line(tmp_path):
  for args in (["train", "--config.train.nope=1"], ["train", "--config.train.steps=abc"],
               ["train", "--config=configs/smoke.py:nope"], ["prep", "--config.mesh=3"]):
    result = subprocess.run([sys.executable, "-m", "sleepjax.cli", *args, f"--workdir={tmp_path}"],
                            capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr, lines
  missing = _cli("train", workdir=tmp_path / "empty")
  assert missing.returncode == 1 and "run `sleepjax prep` first" in missing.stderr
  assert "Traceback" not in missing.stderr
