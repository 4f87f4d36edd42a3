"""The CPU smoke sweep end to end: 3 sizes x 2 modality counts run, survive an interruption,
resume, and produce the fitted table and plots (slow); one member runs as a 2-process job."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from launch.local import launch
from sleepjax import sweep
from tests.conftest import REPO

SMOKE = REPO / "configs" / "sweeps" / "smoke.py"
# The subprocesses of these tests inherit conftest's compile settings (XLA's fastest-compiling
# CPU back end, the session's persistent compilation cache: a resumed run skips compiling again).


def _config(prepared, **changes):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(str(SMOKE))
  config.data.dir = str(prepared / "data")
  for key, value in changes.items():
    sweep.set_key(config, key, value)
  return config


def test_a_sweep_member_runs_as_two_processes_resumes_and_is_skipped(prepared, tmp_path,
                                                                    monkeypatch, capfd):
  """launch/local.py runs one member of the smoke sweep as 2 JAX processes (each owns 4 CPU
  devices and its data slice): a 2-step chunk (as a time-limited job would), then the rest,
  resumed; once finished, running it again does nothing. (The repository's one multi-process
  training test: every 2-process check lives here, so the suite trains 2 processes once.)"""
  monkeypatch.chdir(REPO)
  run = sweep.expand(str(SMOKE), _config(prepared, **{"train.steps": 4,
                                                      "train.checkpoint_every": 2}),
                     str(tmp_path / "sweep"))[0]
  member = ["sweep-run", f"--config={run['dir']}/config.py", f"--workdir={run['dir']}"]
  two = lambda *flags: launch(member + list(flags), num_processes=2, devices_per_process=4,
                              timeout_s=600)
  assert two("--config.train.stop_after_steps=2") == 0
  assert sweep.status(run["dir"]) == "started" and sweep.latest_step(run["dir"]) == 2
  step = pathlib.Path(run["dir"], "train", "checkpoints", "2")
  # One Grain iterator state per process, next to the (globally sharded) train state.
  assert sorted(p.name for p in (step / "data").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert (step / "state").is_dir() and (step / "commit_success.txt").exists()
  # Resuming those two iterator positions from one process must fail clearly, not silently.
  one = subprocess.run([sys.executable, "-m", "sleepjax.cli", *member], capture_output=True,
                       text=True, cwd=REPO, check=False)
  assert one.returncode == 1 and "saved by 2 processes, this run has 1" in one.stderr, one.stderr
  capfd.readouterr()
  assert two() == 0
  assert "resumed from step 2" in "".join(capfd.readouterr())
  result_path = pathlib.Path(run["dir"], "result.json")
  result = json.loads(result_path.read_text())
  manifest = json.loads((prepared / "data" / "manifest.json").read_text())
  scored = "val" if manifest["splits"].get("val", {}).get("records") else "test"
  assert result["step"] == 4 and result["val_loss"] > 0 and result["loss_split"] == scored
  assert result["modality_count"] == 2 and result["params"] > 0
  assert result["flops"] == 4 * result["flops_per_step"] > 0 and result["tokens"] > 0
  assert sorted(p.name for p in pathlib.Path(run["dir"], "train", "checkpoints", "4", "data").glob(
      "*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
  stamp = result_path.stat().st_mtime_ns
  assert two() == 0  # finished: skipped, nothing rewritten
  assert "is finished" in capfd.readouterr().out and result_path.stat().st_mtime_ns == stamp


@pytest.mark.slow  # ~2.5 CPU-minutes: 282 s on the shared 2-core machine at load 12-14
def test_smoke_sweep_through_the_command_line(prepared, tmp_path):
  """`sleepjax sweep` (local runner, two runs at once, one subprocess per run) over 3 sizes x 2
  modality counts, 20 steps each: interrupted after 10 steps of 4 runs, then resumed; finished runs
  are skipped; one is evaluated afterwards; `sleepjax sweep-report` fits the power laws and writes
  the table (with the probe macro-F1) and plots."""
  workdir = tmp_path / "sweep"
  base = [sys.executable, "-m", "sleepjax.cli", "sweep", f"--config={SMOKE}",
          f"--workdir={workdir}", f"--config.data.dir={prepared / 'data'}",
          "--config.launch.local.parallel=2", "--config.launch.local.cpu_devices=1"]
  sweep_cli = lambda *flags: subprocess.run(base + list(flags), check=True, cwd=REPO,
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
  # launch.eval added later: finished runs are not trained again, only evaluated (here just one)
  out = sweep_cli("--config.launch.eval=True", "--config.launch.local.max_runs=1")
  assert "6 finished, 6 to run or evaluate" in out and out.count("eval  ") == 1
  evaluated = [n for n, d in runs.items() if os.path.exists(f"{d}/eval/report.json")]
  assert len(evaluated) == 1 and stamps == {
      n: os.stat(os.path.join(d, "result.json")).st_mtime_ns for n, d in runs.items()}
  f1 = json.loads(open(f"{runs[evaluated[0]]}/eval/report.json").read())["pretrained"]["macro_f1"]

  out = subprocess.run([sys.executable, "-m", "sleepjax.cli", "sweep-report",
                        f"--workdir={workdir}"], check=True, cwd=REPO,
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
  assert {r["name"]: r.get("probe_macro_f1") for r in report["runs"]} == {
      n: f1 if n in evaluated else None for n in runs} and 0 < f1 <= 1
  md = (workdir / "report" / "report.md").read_text()
  assert all(f"| {n} |" in md for n in runs)
  assert sorted(report["plots"]) == ["compute", "modalities", "params"]
  for name in report["plots"].values():
    png = (workdir / "report" / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
