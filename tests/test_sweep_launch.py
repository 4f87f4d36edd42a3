"""Sweep expansion and the generated cluster scripts: golden files, `bash -n`, resumable layout."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from launch import slurm, xpk
from sleepjax import sweep
from sleepjax.sweep import local as local_runner
from tests.conftest import REPO

GOLDEN = pathlib.Path(__file__).with_name("golden")
WORKDIR = "/shared/sweeps/smoke"  # fixed paths: the golden files do not depend on this machine
RUN_DIRS = [f"{WORKDIR}/runs/{n}" for n in ("xs-m2", "xs-m3", "s-m2")]
SMOKE = REPO / "configs" / "sweeps" / "smoke.py"


def _settings(**launch):
  settings = sweep.launch_config()
  settings.slurm.partition, settings.slurm.account, settings.slurm.max_concurrent = "gpu", "lab", 2
  settings.xpk.tpu_name = "sleepjax-v5p"
  for k, v in launch.items():
    settings[k] = v
  return settings


def _scripts() -> dict[str, str]:
  s = _settings()
  chunked = _settings(stop_after_steps=1000, eval=True)
  return {
      "slurm.sbatch": slurm.script(WORKDIR, len(RUN_DIRS), s.slurm, repo="/home/me/sleepjax"),
      "slurm_chunked.sbatch": slurm.script(WORKDIR, len(RUN_DIRS), chunked.slurm,
                                           repo="/home/me/sleepjax", stop_after_steps=1000,
                                           evaluate=True),
      "xpk_workloads.sh": xpk.xpk_script(WORKDIR, RUN_DIRS, s.xpk, repo="/home/me/sleepjax"),
      "xpk_tpu_vm.sh": xpk.tpu_vm_script(WORKDIR, s.xpk, run_dirs=RUN_DIRS),
  }


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_generated_scripts_match_golden_files_and_parse(name, tmp_path):
  text = _scripts()[name]
  golden = GOLDEN / name
  if os.environ.get("SLEEPJAX_UPDATE_GOLDEN"):
    golden.write_text(text)
  assert text == golden.read_text(), f"regenerate with SLEEPJAX_UPDATE_GOLDEN=1 and review {golden}"
  path = tmp_path / name
  path.write_text(text)
  subprocess.run(["bash", "-n", str(path)], check=True)


def test_sbatch_directives_come_before_any_command():
  text = _scripts()["slurm.sbatch"]
  lines = text.splitlines()
  last_directive = max(i for i, l in enumerate(lines) if l.startswith("#SBATCH"))
  assert all(not l.strip() or l.startswith("#") for l in lines[:last_directive])
  assert "--array=0-2%2" in text and "srun" in text and "jax.distributed" in text
  assert "#SBATCH --signal=TERM@120" in text  # the trainer saves before the time limit


def test_expand_writes_one_workdir_per_run_and_refuses_a_changed_config(tmp_path):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(str(SMOKE))
  runs = sweep.expand(str(SMOKE), config, str(tmp_path))
  assert len(runs) == 6 and len({r["name"] for r in runs}) == 6
  sizes = {json.loads(pathlib.Path(r["dir"], "config.json").read_text())["model"]["width"]
           for r in runs}
  counts = {len(r["overrides"]["data.modalities"]) for r in runs}
  assert len(sizes) == 3 and counts == {2, 3}
  first = pathlib.Path(runs[0]["dir"])
  resolved = sweep.read_run_config(first / "config.json")
  assert "sweep" not in resolved and "launch" not in resolved
  assert resolved.data.dir == str(tmp_path / "data")
  assert isinstance(resolved.prep.modalities, tuple)
  loaded = load_config(str(first / "config.py"))  # what `sweep-run --config=<run>/config.py` reads
  assert loaded.to_dict() == resolved.to_dict()
  assert (tmp_path / "runs.txt").read_text().splitlines() == [r["dir"] for r in runs]

  assert sweep.expand(str(SMOKE), config, str(tmp_path)) == runs  # same sweep again: unchanged
  config.optim.lr = 1e-4
  with pytest.raises(ValueError, match="optim.lr"):
    sweep.expand(str(SMOKE), config, str(tmp_path))

  config.sweep.seeds = (0, 1)  # every run once per seed
  seeded = sweep.expand(str(SMOKE), config, str(tmp_path / "seeds"))
  assert len(seeded) == 12
  assert sorted(json.loads(pathlib.Path(r["dir"], "config.json").read_text())["seed"]
                for r in seeded) == [0] * 6 + [1] * 6


def test_sweep_command_writes_slurm_and_xpk_scripts(tmp_path):
  env = dict(os.environ, PATH=os.path.dirname(shutil.which("bash")))
  env["PATH"] += os.pathsep + os.path.dirname(os.path.realpath(__import__("sys").executable))
  for runner in ("slurm", "xpk"):
    out = subprocess.run(
        [__import__("sys").executable, "-m", "sleepjax.cli", "sweep", f"--config={SMOKE}",
         f"--runner={runner}", f"--workdir={tmp_path}", "--config.launch.slurm.nodes=2"],
        env=env, capture_output=True, text=True, check=True).stdout
    assert "6 runs" in out
    if runner == "slurm":  # not submitted: the command to run on the login node is printed
      sbatch_path = next((tmp_path / "slurm").glob("*/sweep.sbatch"))
      assert f"sbatch {sbatch_path}" in out and "not submitted" in out
  sbatch = sbatch_path.read_text()
  assert "#SBATCH --nodes=2" in sbatch and "#SBATCH --array=0-5" in sbatch
  assert (sbatch_path.parent / "runs.txt").read_text() == (tmp_path / "runs.txt").read_text()
  workloads = (tmp_path / "xpk" / "workloads.sh").read_text()
  assert "xpk workload create" in workloads and f"docker build" in workloads
  assert "--worker=all" in (tmp_path / "xpk" / "tpu_vm.sh").read_text()
  for script in (sbatch_path, tmp_path / "xpk/workloads.sh", tmp_path / "xpk/tpu_vm.sh"):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_script_is_submitted_only_when_asked(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "sbatch"  # records its arguments, answers like sbatch
  fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "Submitted batch job 42"\n')
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  printed = []
  runs = [f"/w/runs/{n}" for n in "abc"]
  first = slurm.write_and_submit(str(tmp_path / "w"), runs, _settings().slurm, repo="/r",
                                 log=printed.append)
  assert not (tmp_path / "args").exists() and "not submitted" in printed[0]  # sbatch on PATH
  path = slurm.write_and_submit(str(tmp_path / "w"), runs[:2], _settings().slurm, repo="/r",
                                submit=True, log=printed.append)
  assert (tmp_path / "args").read_text().split() == [path]
  assert printed[1] == f"sweep: submitted {path}: Submitted batch job 42"
  # each submission indexes its own snapshot of the run list
  assert pathlib.Path(first).with_name("runs.txt").read_text().split() == runs
  assert pathlib.Path(path).with_name("runs.txt").read_text().split() == runs[:2]


FAKE_SLURM = {  # stand-ins that record their calls; sleepjax "finishes" a run when FINISH is set
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
    "scontrol": '#!/bin/bash\necho "scontrol $*" >> "$CALLS"\n',
    "sleepjax": '#!/bin/bash\necho "sleepjax $1" >> "$CALLS"\n'
                'for a in "$@"; do case $a in --workdir=*) w=${a#--workdir=};; esac; done\n'
                'if [ "$1" = sweep-run ] && [ -n "$FINISH" ]; then echo {} > "$w/result.json"; fi\n'
                'if [ "$1" = sweep-run ] && [ -n "$STEP" ]; then mkdir -p "$w/train/checkpoints/$STEP"; fi\n'
                'if [ "$1" = eval ]; then mkdir -p "$w/eval"; echo {} > "$w/eval/report.json"; fi\n',
}


def test_sbatch_script_trains_requeues_and_evaluates_as_needed(tmp_path):
  """The generated array script, run by bash with stand-ins for srun, scontrol and sleepjax."""
  bin_dir, run = tmp_path / "bin", tmp_path / "runs" / "a"
  bin_dir.mkdir()
  run.mkdir(parents=True)
  for name, text in FAKE_SLURM.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  (tmp_path / "runs.txt").write_text(f"{run}\n")
  settings = _settings().slurm
  settings.setup = ()
  path = tmp_path / "sweep.sbatch"
  path.write_text(slurm.script(str(tmp_path), 1, settings, repo=str(tmp_path), evaluate=True))

  def task(finish: bool, step: str = "", check: bool = True) -> list[str]:
    calls = tmp_path / "calls"
    calls.write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CALLS=str(calls),
               SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7", FINISH="1" if finish else "",
               STEP=step)
    subprocess.run(["bash", str(path)], env=env, check=check, capture_output=True)
    return calls.read_text().splitlines()

  # stopped early after saving step 10: requeued
  assert task(finish=False, step="10") == ["sleepjax sweep-run", "scontrol requeue 7_0"]
  # stopped again without a new checkpoint: not requeued (the task fails instead)
  assert task(finish=False, step="10", check=False) == ["sleepjax sweep-run"]
  assert task(finish=True) == ["sleepjax sweep-run", "sleepjax eval"]
  assert task(finish=True) == []  # finished and evaluated: nothing to do
  (run / "eval" / "report.json").unlink()
  assert task(finish=True) == ["sleepjax eval"]  # evaluated, not trained again


def test_modality_subsets_are_deterministic_and_distinct():
  mods = ("eeg", "eog", "emg", "ecg", "heart_rate", "spo2", "airflow", "nasal_pressure",
          "resp_effort")
  for count in range(2, 10):
    subsets = sweep.modality_subsets(mods, count, 3)
    assert subsets == sweep.modality_subsets(mods, count, 3)
    assert len(set(subsets)) == len(subsets) == min(3, len(list(__import__("itertools").combinations(mods, count))))
    assert all(len(s) == count and list(s) == [m for m in mods if m in s] for s in subsets)


def test_local_runner_splits_devices_between_parallel_runs():
  settings = _settings()
  settings.local.parallel, settings.local.gpus = 2, 8
  assert [local_runner._slot_env(i, settings)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == [  # pylint: disable=protected-access
      "0,1,2,3", "4,5,6,7"]
  settings.local.gpus, settings.local.cpu_devices = 0, 4
  assert local_runner._slot_env(1, settings)["XLA_FLAGS"].endswith("=4")  # pylint: disable=protected-access
  settings.local.processes = 2
  cmd = local_runner.member_command("/w/runs/a", settings, python="python")
  assert cmd[:3] == ["python", "-m", "launch.local"] and "--num_processes=2" in cmd
  assert cmd[-3:] == ["sweep-run", "--config=/w/runs/a/config.py", "--workdir=/w/runs/a"]


def test_local_runner_evaluates_finished_runs_only_when_asked(tmp_path):
  settings, run = _settings(), tmp_path / "run"
  (run / "train" / "checkpoints" / "10").mkdir(parents=True)
  assert local_runner._pending(run, settings)  # pylint: disable=protected-access  (started)
  (run / "result.json").write_text("{}")
  assert not local_runner._pending(run, settings)  # pylint: disable=protected-access  (finished)
  settings.eval = True
  assert local_runner._pending(run, settings)  # pylint: disable=protected-access  (not evaluated yet)
  (run / "eval").mkdir()
  (run / "eval" / "report.json").write_text("{}")
  assert not local_runner._pending(run, settings)  # pylint: disable=protected-access


@pytest.mark.parametrize("preset,n_runs", [("size", 8), ("compute", 24), ("modalities", 22),
                                           ("data", 5)])
def test_sleep2vec_presets_expand_with_flop_matched_steps(preset, n_runs, tmp_path):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  path = REPO / "configs" / "sweeps" / "sleep2vec.py"
  config = load_config(f"{path}:{preset}")
  runs = sweep.expand(str(path), config, str(tmp_path))
  assert len(runs) == n_runs
  for run in runs:
    member = sweep.read_run_config(pathlib.Path(run["dir"], "config.json"))
    spent = member.train.steps * sweep.flops_per_step(member)
    budget = run["overrides"]["budget_flops"]
    assert abs(spent - budget) <= 0.5 * sweep.flops_per_step(member) + 1e-9 * budget
  if preset == "size":  # bigger models get fewer steps for the same compute
    steps = [r["steps"] for r in runs]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]
  if preset == "modalities":
    counts = [len(r["overrides"]["data.modalities"]) for r in runs]
    assert sorted(set(counts)) == list(range(2, 10))
