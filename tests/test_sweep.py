"""The CPU smoke sweep end to end: 3 sizes x 2 modality counts run, survive an interruption,
resume, and produce the fitted table and plots; one member also runs as a 2-process job."""

import json
import math
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


@pytest.mark.slow  # 81 s on the shared 2-core machine (load ~7); `make test-slow` runs it
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


# Compile-time settings for the sweep's subprocesses: XLA's CPU back end at its lowest optimisation
# level compiles about twice as fast (the same val_loss to 4 digits on the smoke model), and a
# persistent compilation cache lets a resumed run skip compiling what it compiled before.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


@pytest.mark.slow  # ~2 CPU-minutes: 277 s on the shared 2-core machine at load 12-17
def test_smoke_sweep_through_the_command_line(prepared, tmp_path):
  """`sleepjax sweep` (local runner, two runs at once, one subprocess per run) over 3 sizes x 2
  modality counts, 20 steps each: interrupted after 10 steps of 4 runs, then resumed; finished runs
  are skipped; `sleepjax sweep-report` fits the power laws and writes the table and plots."""
  env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE),
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  workdir = tmp_path / "sweep"
  base = [sys.executable, "-m", "sleepjax.cli", "sweep", f"--config={SMOKE}",
          f"--workdir={workdir}", f"--config.data.dir={prepared / 'data'}",
          "--config.launch.local.parallel=2", "--config.launch.local.cpu_devices=1"]
  sweep_cli = lambda *flags: subprocess.run(base + list(flags), check=True, cwd=REPO, env=env,
                                            capture_output=True, text=True).stdout
  # The interruption: each of the first 4 runs trains a 10-step chunk of its 20 steps and stops,
  # as a preempted or time-limited job does; the last 2 runs never start.
  out = sweep_cli("--config.launch.stop_after_steps=10", "--config.launch.local.max_runs=4")
  assert "0 finished, 6 to run" in out and out.count(": started") == 4
  runs = {r["name"]: r["dir"] for r in json.loads((workdir / "sweep.json").read_text())["runs"]}
  assert len(runs) == 6
  assert sorted(sweep.status(d) for d in runs.values()) == ["new"] * 2 + ["started"] * 4
  assert sorted(sweep.latest_step(d) for d in runs.values()) == [0, 0, 10, 10, 10, 10]

  out = sweep_cli()
  assert "0 finished, 6 to run" in out and out.count("resume") == 4 and out.count(": done") == 6
  for d in runs.values():
    log = open(os.path.join(d, "log.txt")).read()
    assert ("resumed from step 10" in log) == (log.count("sweep-run: config") == 2)
  resumed = [d for d in runs.values() if "resumed from step 10" in open(f"{d}/log.txt").read()]
  assert len(resumed) == 4
  results = {n: json.loads(open(os.path.join(d, "result.json")).read()) for n, d in runs.items()}
  assert {r["step"] for r in results.values()} == {20}
  stamps = {n: os.stat(os.path.join(d, "result.json")).st_mtime_ns for n, d in runs.items()}

  out = sweep_cli()  # everything finished: nothing runs, nothing is rewritten
  assert "6 finished, 0 to run" in out and "start" not in out and "resume" not in out
  assert stamps == {n: os.stat(os.path.join(d, "result.json")).st_mtime_ns
                    for n, d in runs.items()}

  out = subprocess.run([sys.executable, "-m", "sleepjax.cli", "sweep-report",
                        f"--workdir={workdir}"], check=True, cwd=REPO, env=env,
                       capture_output=True, text=True).stdout
  # 6 parameter counts (each modality has its own tokenizer), 2 modality counts: too few to fit
  assert "| params | 6 |" in out and "| modalities | 2 |" in out
  report = json.loads((workdir / "report" / "report.json").read_text())
  assert sorted(r["name"] for r in report["runs"]) == sorted(runs)
  assert len({json.loads(open(f"{d}/config.json").read())["model"]["width"]
              for d in runs.values()}) == 3
  assert {r["modality_count"] for r in report["runs"]} == {2, 3}
  fit = report["fits"]["params"]
  assert fit["points"] == 6 and fit["bootstraps"] > 0
  assert all(math.isfinite(fit[k]) for k in ("a", "alpha", "c"))
  sizes = sorted({r["params"] for r in results.values()})
  assert fit["x"] == sizes and fit["frontier_loss"] == [  # the best run of each size
      min(r["val_loss"] for r in results.values() if r["params"] == p) for p in sizes]
  assert 0 <= fit["c"] <= min(fit["frontier_loss"])
  md = (workdir / "report" / "report.md").read_text()
  assert all(f"| {n} |" in md for n in runs)
  assert sorted(report["plots"]) == ["compute", "modalities", "params"]
  for name in report["plots"].values():
    png = (workdir / "report" / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
