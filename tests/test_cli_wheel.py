"""Packaging: a wheel built from this tree, installed (not editable) into a fresh venv, runs the
command line from another directory, finds its packaged configs and trains one step."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(cmd, **kwargs):
  result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
  assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-4000:])
  return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_one_step(prepared, tmp_path):
  dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
  pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
  # Built from a copy: an in-tree build would leave build/ behind in the checkout.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
  _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w",
        str(dist)], env=pip_env)
  wheel = next(dist.glob("sleepjax-*.whl"))
  _run([sys.executable, "-m", "venv", str(venv)])
  _run([str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(REPO / "requirements.lock"),
        str(wheel)], env=pip_env)

  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  sleepjax = str(venv / "bin" / "sleepjax")
  work.mkdir()
  out = _run([sleepjax, "--help"], cwd=work, env=env).stdout
  assert "Commands:" in out and "train" in out
  out = _run([str(venv / "bin" / "python"), "-c", "import sleepjax; print(sleepjax.__file__)"],
             cwd=work, env=env).stdout
  assert out.startswith(str(venv)), out  # the installed copy, not this tree
  out = _run([str(venv / "bin" / "python"), "-m", "sleepjax", "--version"], cwd=work, env=env)
  assert out.stdout.startswith("sleepjax ")
  out = _run([sleepjax, "config", "--config=configs/smoke.py:tiny"], cwd=work, env=env).stdout
  assert "steps: 6" in out

  os.symlink(prepared / "data", work / "data")
  result = _run([sleepjax, "train", "--config=configs/smoke.py:tiny", "--config.train.steps=1",
                 "--workdir=."], cwd=work, env=env)
  assert result.stderr.splitlines()[0].startswith(
      f"sleepjax train: config configs/smoke.py:tiny ({venv}")  # the packaged config
  assert "train: " in result.stdout and (work / "train" / "checkpoints" / "1").is_dir()
