"""The CPU smoke sweep end to end: 3 sizes x 2 modality counts run, survive an interruption,
resume, and produce the fitted table and plots; one member also runs as a 2-process job."""

import json
import os
import subprocess
import sys

import pytest

from launch.local import launch
from sleepjax import sweep, sweep_report
from tests.conftest import REPO

SMOKE = REPO / "configs" / "sweeps" / "smoke.py"


def _config(prepared, **changes):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(str(SMOKE))
  config.data.dir = str(prepared / "data")
  for key, value in changes.items():
    sweep.set_key(config, key, value)
  return config


def test_sweep_members_stop_resume_and_report(prepared, tmp_path):
  """The fast variant, in-process: two members of the smoke sweep stop half-way (a time-limited
  job), resume to the end, are skipped once finished, and are reported (table, JSON, plots)."""
  config = _config(prepared, **{"train.steps": 4, "train.checkpoint_every": 2,
                                "train.log_every": 2, "sweep.sizes": ("xs", "s"),
                                "sweep.modality_counts": (2,)})
  runs = sweep.expand(str(SMOKE), config, str(tmp_path))
  assert len(runs) == 2
  results = {}
  for run in runs:
    member = sweep.read_run_config(os.path.join(run["dir"], "config.json"))
    member.train.stop_after_steps = 2
    assert sweep.run_member(member, run["dir"]) is None
    assert sweep.status(run["dir"]) == "started" and sweep.latest_step(run["dir"]) == 2
    member.train.stop_after_steps = 0  # the requeued job resumes at step 2 and finishes
    results[run["name"]] = sweep.run_member(member, run["dir"])
    assert sweep.status(run["dir"]) == "done"
    assert sweep.run_member(member, run["dir"]) == results[run["name"]]  # finished: skipped
  assert {r["step"] for r in results.values()} == {4}
  assert len({r["params"] for r in results.values()}) == 2
  assert all(r["flops"] > 0 and r["tokens"] > 0 and r["val_loss"] > 0 and r["modality_count"] == 2
             for r in results.values())
  report = sweep_report.report(tmp_path, n_boot=10, log=lambda *_: None)
  assert len(report["runs"]) == 2 and report["fits"]["params"]["points"] == 2
  for name in ("report.md", "report.json", "params.png", "compute.png"):
    assert (tmp_path / "report" / name).exists()


@pytest.mark.slow  # ~1 min on an idle 2-core machine; tests/test_multiprocess.py covers 2 processes
def test_a_sweep_member_runs_as_two_processes(prepared, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  config = _config(prepared, **{"train.steps": 2, "train.checkpoint_every": 2})
  run = sweep.expand(str(SMOKE), config, str(tmp_path))[0]
  code = launch(["sweep-run", f"--config={run['dir']}/config.py", f"--workdir={run['dir']}"],
                num_processes=2, devices_per_process=4, timeout_s=600)
  assert code == 0
  result = json.loads(open(os.path.join(run["dir"], "result.json")).read())
  assert result["step"] == 2 and result["val_loss"] > 0
  assert sorted(p.name for p in (
      tmp_path / "runs" / run["name"] / "train" / "checkpoints" / "2" / "data").glob("*.json")) == [
          "process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.slow
def test_smoke_sweep_through_the_command_line(prepared, tmp_path):
  """`sleepjax sweep` (local runner, one subprocess per run), killed mid-sweep, then resumed;
  `sleepjax sweep-report` writes the table and plots."""
  base = [sys.executable, "-m", "sleepjax.cli", "sweep", f"--config={SMOKE}",
          f"--workdir={tmp_path}", f"--config.data.dir={prepared / 'data'}"]
  # The first invocation gives each run a 10-step chunk of its 20 steps (as a preempted or
  # time-limited job would), and stops after 4 runs.
  subprocess.run(base + ["--config.launch.stop_after_steps=10", "--config.launch.local.max_runs=4"],
                 check=True, cwd=REPO)
  status = [sweep.status(tmp_path / "runs" / r) for r in sorted(os.listdir(tmp_path / "runs"))]
  assert status.count("started") == 4 and status.count("new") == 2
  out = subprocess.run(base, check=True, cwd=REPO, capture_output=True, text=True).stdout
  assert "0 finished, 6 to run" in out and out.count("resume") == 4
  out = subprocess.run(base, check=True, cwd=REPO, capture_output=True, text=True).stdout
  assert "6 finished, 0 to run" in out
  out = subprocess.run([sys.executable, "-m", "sleepjax.cli", "sweep-report",
                        f"--workdir={tmp_path}"], check=True, cwd=REPO, capture_output=True,
                       text=True).stdout
  assert "| params | 6 |" in out
  assert (tmp_path / "report" / "params.png").exists()
