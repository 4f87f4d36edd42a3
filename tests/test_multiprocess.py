"""A real 2-process JAX job on localhost: each process owns 4 CPU devices and its data slice."""

import sys

from launch.local import launch
from tests.conftest import REPO


def test_two_processes_train_and_checkpoint(prepared, tmp_path, monkeypatch):
  (tmp_path / "data").symlink_to(prepared / "data")
  monkeypatch.chdir(REPO)
  code = launch(["train", f"--config={REPO}/configs/smoke.py:tiny", "--config.train.steps=3",
                 "--config.train.checkpoint_every=3", f"--workdir={tmp_path}"],
                num_processes=2, devices_per_process=4, timeout_s=600)
  assert code == 0
  step = tmp_path / "train" / "checkpoints" / "3"
  # One Grain iterator state per process, next to the (globally sharded) train state.
  assert sorted(p.name for p in (step / "data").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert (step / "state").is_dir() and (step / "commit_success.txt").exists()

  # Resuming those two iterator positions from one process must fail clearly, not silently.
  import subprocess  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-m", "sleepjax.cli", "train", f"--config={REPO}/configs/smoke.py:tiny",
       "--config.train.steps=5", f"--workdir={tmp_path}"], capture_output=True, text=True,
      cwd=REPO, check=False)
  assert result.returncode == 1 and "saved by 2 processes, this run has 1" in result.stderr
