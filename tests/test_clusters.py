"""Cluster semantics without a cluster (issue 27): cloud storage paths on an in-memory `gs://`
filesystem, the jax.distributed decision table, and the generated SLURM / xpk / TPU VM scripts run
by bash with stand-ins for srun, sbatch, squeue, xpk, docker and gcloud that record what they get."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from launch import local as local_launch, slurm, xpk
from sleepjax import config_tools, distributed, sweep
from sleepjax.sweep import lease, local as local_runner
from tests.conftest import REPO

SMOKE = REPO / "configs" / "sweeps" / "smoke.py"


class FakeGCS(MemoryFileSystem):
  """`gs://` held in memory: what etils.epath's fsspec back end opens for a gs:// path."""
  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]


@pytest.fixture
def gcs(monkeypatch):
  """Registers FakeGCS for `gs://` (gcsfs, the real one, is not installed here)."""
  monkeypatch.setattr(FakeGCS, "store", {})
  monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
  monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "gcs", FakeGCS)  # pylint: disable=protected-access
  FakeGCS.clear_instance_cache()
  yield FakeGCS.store
  FakeGCS.clear_instance_cache()


def _tools(bin_dir: pathlib.Path, **scripts) -> dict:
  """Writes stand-in commands; returns an environment with them first on PATH."""
  bin_dir.mkdir(exist_ok=True)
  for name, text in scripts.items():
    (bin_dir / name).write_text("#!/bin/bash\n" + text)
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# ------------------------------------------------------------------ 1: gs:// paths


def test_a_sweep_on_gs_stays_on_gs(gcs, tmp_path, monkeypatch):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  runs = sweep.expand(str(SMOKE), load_config(str(SMOKE)), "gs://bucket/sweep")
  assert not list(tmp_path.iterdir())  # nothing written locally (no ./gs:/bucket/...)
  assert runs[0]["dir"] == f"gs://bucket/sweep/runs/{runs[0]['name']}"
  assert f"{runs[0]['dir']}/config.json" in gcs and "gs://bucket/sweep/runs.txt" in gcs
  config = config_tools.load_config(f"{runs[0]['dir']}/config.json")  # what the scripts pass
  assert config.data.dir == "gs://bucket/sweep/data"
  assert sweep.status(runs[0]["dir"]) == "new" and sweep.latest_step(runs[0]["dir"]) == 0
  epath.Path(runs[0]["dir"], "result.json").write_text("{}")
  assert sweep.status(runs[0]["dir"]) == "done"


def test_checkpoints_on_gs_reach_orbax_as_gs_and_their_config_is_read(gcs, tiny_config,
                                                                      monkeypatch):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  seen = []

  class Manager:  # records the directory and options Orbax would get
    def __init__(self, directory, options=None):
      seen.append((os.fspath(directory), options))

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def all_steps(self):
      return [10]

  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Manager)
  directory = "gs://bucket/w/train/checkpoints"
  epath.Path(directory, "10", "config", "metadata").parent.mkdir(parents=True, exist_ok=True)
  epath.Path(directory, "10", "config", "metadata").write_text(json.dumps(tiny_config.to_dict()))
  checkpoint.make_manager(directory, tiny_config)
  assert checkpoint.all_steps(directory) == [10]
  assert [d for d, _ in seen] == [directory, directory]
  # the resume-config check sees the saved config (it was skipped silently: "no config saved")
  assert checkpoint.saved_config(directory, 10)["model"] == tiny_config.model.to_dict()


def test_a_flat_bucket_through_gcsfuse_gets_commit_file_checkpoints(tiny_config, tmp_path,
                                                                    monkeypatch):
  from sleepjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.train.checkpoint_commit_file = True
  seen = {}
  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager",
                      lambda directory, options: seen.update(options=options))
  checkpoint.make_manager(str(tmp_path), config)
  assert seen["options"].temporary_path_class is (
      checkpoint.ocp.path.atomicity.CommitFileTemporaryPath)


# ------------------------------------------------------------------ 2: jax.distributed


@pytest.mark.parametrize("env,chips,expected", [
    ({}, 0, "none"),  # a workstation
    ({}, 4, "auto"),  # a TPU VM worker: JAX's GCE detection sets no variable we could see
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, 0, "auto"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "x:1"}, 0, "auto"),  # multislice (xpk)
    ({"JAX_PLATFORMS": "cpu"}, 4, "none"),  # a CPU run on a TPU host
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}, 0, "auto"),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}, 0, "none"),
])
def test_distributed_start_up_decision_table(env, chips, expected):
  assert distributed.plan(env, tpu_chips=chips) == expected
  assert distributed.plan(env, tpu_chips=chips, coordinator="h:1") == "explicit"


# ------------------------------------------------------------------ 3: non-editable installs


def test_cluster_scripts_need_a_checkout_not_site_packages(tmp_path):
  site = tmp_path / "site-packages"
  (site / "sleepjax").mkdir(parents=True)
  with pytest.raises(ValueError, match=sweep.REPO_ENV):
    sweep.repo_dir(site, env={})
  assert sweep.repo_dir(site, env={sweep.REPO_ENV: str(REPO)}) == REPO.resolve()
  with pytest.raises(ValueError, match="not a sleepjax checkout"):
    sweep.repo_dir(site, env={sweep.REPO_ENV: str(site)})
  assert sweep.repo_dir(REPO, env={}) == REPO
  assert sweep.family_sizes("sleep2vec")  # the size tables come from the packaged configs


# ------------------------------------------------------------------ 4-6: xpk


FAKE_SLEEPJAX = ('echo "sleepjax $*" >> "$CALLS"\n'
                 'for a in "$@"; do case $a in --workdir=*) w=${a#--workdir=};; esac; done\n'
                 'if [ -n "$FINISH" ]; then echo {} > "$w/result.json"; fi\n')


def test_xpk_builds_one_image_names_workloads_uniquely_and_restarts_unfinished_runs(tmp_path):
  workdir = tmp_path / "My_Sweep_2026.scaling-laws-with-a-long-name"
  run_dirs = [str(workdir / "runs" / n) for n in ("a", "b", "c")]
  for d in run_dirs:
    os.makedirs(d)
  settings = sweep.launch_config()
  env = _tools(tmp_path / "bin", docker='echo "docker $*" >> "$CALLS"\n',
               xpk='for a in "$@"; do echo "$a"; done > "$CALLS.xpk.$RANDOM$RANDOM"\n'
                   'echo "xpk $2" >> "$CALLS"\n', sleepjax=FAKE_SLEEPJAX)
  calls = tmp_path / "calls"
  env["CALLS"] = str(calls)
  first, _ = xpk.write(str(workdir), run_dirs, settings.xpk, repo=str(REPO), log=lambda m: None)
  subprocess.run(["bash", first], env=env, check=True)
  log = calls.read_text().splitlines()
  assert [l.split()[1] for l in log] == ["build", "push", "create", "create", "create"]
  image = log[1].split()[2]
  creates = [p.read_text().splitlines() for p in tmp_path.glob("calls.xpk.*")]
  flags = [{a.split("=", 1)[0]: a.split("=", 1)[1] for a in c if "=" in a} for c in creates]
  names = [f["--workload"] for f in flags]
  assert len(set(names)) == 3 and all(
      re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 40 for n in names)
  assert all(f["--docker-image"] == image for f in flags)  # built once, used by all
  assert all(int(f["--termination-grace-period-seconds"]) >= 120 for f in flags)
  assert "--script-dir" not in "".join(log)
  # the workload's name is its run's lease id, the same across xpk's restarts
  assert all(f"SLEEPJAX_JOB_ID={f['--workload']} " in f["--command"] for f in flags)
  # another sweep, or the same one written again, never reuses a name
  again = xpk.xpk_script(str(workdir), run_dirs, settings.xpk, repo=str(REPO), stamp="other")
  other = xpk.xpk_script(str(tmp_path / "x"), run_dirs, settings.xpk, repo=str(REPO))
  for text in (again, other):
    assert not set(re.findall(r"--workload=(\S+)", text)) & set(names)

  def command(f: dict, finish: bool) -> int:
    return subprocess.run(["bash", "-c", f["--command"]], env=dict(env, FINISH="1" if finish
                                                                   else "")).returncode

  by_run = {f["--command"].split("--workdir=")[1].split()[0]: f for f in flags}
  assert command(by_run[run_dirs[0]], finish=False) == 42  # unfinished: xpk restarts it
  assert command(by_run[run_dirs[0]], finish=True) == 0  # finished: the JobSet completes


def test_the_image_leaves_out_environments_and_outputs_and_pins_dependencies():
  ignored = (REPO / ".dockerignore").read_text().split()
  assert {".venv/", "runs/", ".git/"} <= set(ignored)
  dockerfile = (REPO / "launch" / "Dockerfile").read_text()
  assert "-r requirements.lock" in dockerfile and '-c requirements.lock ".[tpu]"' in dockerfile
  assert "pip install -e" not in "".join(sweep.launch_config().xpk.image_setup)


# ------------------------------------------------------------------ 7-8: SLURM


def test_slurm_job_sets_its_own_platform_and_gives_srun_its_cpus(tmp_path):
  run = tmp_path / "runs" / "a"
  run.mkdir(parents=True)
  (tmp_path / "runs.txt").write_text(f"{run}\n")
  settings = sweep.launch_config().slurm
  settings.setup = ()
  path = tmp_path / "sweep.sbatch"
  path.write_text(slurm.script(str(tmp_path), 1, settings, repo=str(tmp_path)))
  env = _tools(tmp_path / "bin", srun='echo "srun $* JAX_PLATFORMS=$JAX_PLATFORMS '
               'XLA_FLAGS=$XLA_FLAGS" >> "$CALLS"\nwhile [[ "$1" == --* ]]; do shift; done\n'
               'exec "$@"\n', sleepjax=FAKE_SLEEPJAX)
  # a CPU-test shell submits: its platform must not reach the GPU job
  env.update(CALLS=str(tmp_path / "calls"), FINISH="1", SLURM_ARRAY_TASK_ID="0",
             SLURM_CPUS_PER_TASK="8", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  subprocess.run(["bash", str(path)], env=env, check=True, capture_output=True)
  srun = (tmp_path / "calls").read_text().splitlines()[0]
  assert "--cpus-per-task=8 " in srun
  assert srun.endswith("JAX_PLATFORMS=cuda XLA_FLAGS=")


def test_slurm_refuses_tasks_that_would_leave_gpus_idle():
  settings = sweep.launch_config().slurm
  settings.tasks_per_node = 1  # one process per node: JAX would give it GPU 0 alone
  with pytest.raises(ValueError, match="SLURM_LOCALID"):
    slurm.script("/w", 2, settings, repo="/r")
  settings.gpus_per_node = 0  # CPU partitions: any task count
  assert "srun" in slurm.script("/w", 2, settings, repo="/r")


def test_sbatch_is_not_called_unless_asked(tmp_path, monkeypatch):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  env = _tools(tmp_path / "bin", sbatch=f'echo "$@" >> {tmp_path}/sbatch\n')
  monkeypatch.setenv("PATH", env["PATH"])
  printed = []
  sweep.launch(str(SMOKE), load_config(str(SMOKE)), str(tmp_path / "w"), "slurm", printed.append)
  assert not (tmp_path / "sbatch").exists() and "not submitted" in "\n".join(printed)
  sweep.launch(str(SMOKE), load_config(str(SMOKE)), str(tmp_path / "w"), "slurm", printed.append,
               submit=True)
  assert len((tmp_path / "sbatch").read_text().splitlines()) == 1


def test_a_run_leased_by_a_live_job_is_refused_and_a_dead_ones_lease_taken_over(tmp_path,
                                                                               monkeypatch):
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  run = sweep.expand(str(SMOKE), load_config(str(SMOKE)), str(tmp_path / "w"))[0]["dir"]
  first = {"scheduler": "slurm", "job": "100_0"}
  assert lease.job_identity({"SLURM_JOB_ID": "101", "SLURM_ARRAY_JOB_ID": "100",
                             "SLURM_ARRAY_TASK_ID": "0"}) == first  # stable across requeues
  assert lease.job_identity({"SLEEPJAX_JOB_ID": "w-1", "SLURM_JOB_ID": "3"}) == {
      "scheduler": "named", "job": "w-1"}  # set by the launcher (xpk: the workload's name)
  lease.acquire(run, first)
  env = _tools(tmp_path / "bin", squeue='echo "squeue $*" >> "$CALLS"\n'
               '[ "$3" = "$ALIVE" ] && echo RUNNING\nexit 0\n')
  monkeypatch.setenv("PATH", env["PATH"])
  monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
  monkeypatch.setenv("ALIVE", "100_0")
  # a second array's task: the first still runs, so training never starts
  monkeypatch.setenv("SLURM_JOB_ID", "205")
  monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "200")
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
  with pytest.raises(lease.RunLeasedError, match="100_0"):
    sweep.run_member(sweep.read_run_config(f"{run}/config.json"), run)
  assert "squeue -h -j 100_0" in (tmp_path / "calls").read_text()
  assert lease.read(run)["job"] == "100_0"
  lease.acquire(run, first)  # the requeued first task resumes its own lease
  monkeypatch.setenv("ALIVE", "none")  # the first job is gone: its lease is taken over
  second = lease.job_identity()
  lease.acquire(run, second)
  assert lease.read(run)["job"] == "200_0"
  lease.release(run, second)
  assert lease.read(run) is None


# ------------------------------------------------------------------ 9: smaller


def test_local_processes_share_their_slots_gpus_not_all_gpus(monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the sweep slot's GPUs
  assert [local_launch._env("gpu", i, 2)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == [  # pylint: disable=protected-access
      "4,5", "6,7"]
  with pytest.raises(ValueError, match="2 GPUs each, 4 visible"):
    local_launch._env("gpu", 2, 2)  # pylint: disable=protected-access
  settings = sweep.launch_config()
  settings.local.gpus, settings.local.parallel, settings.local.processes = 8, 2, 2
  cmd = local_runner.member_command("/w/runs/a", settings, python="python")
  assert "--devices_per_process=2" in cmd and "--platform=gpu" in cmd


def test_tpu_vm_sweep_goes_on_after_a_failed_run_and_survives_sighup(tmp_path):
  run_dirs = [f"/w/runs/{n}" for n in ("a", "b", "c")]
  settings = sweep.launch_config().xpk
  path = tmp_path / "tpu_vm.sh"
  path.write_text(xpk.tpu_vm_script("/w", settings, run_dirs=run_dirs))
  env = _tools(tmp_path / "bin", gcloud='echo "$@" >> "$CALLS"\nsleep 0.5\n'
               'case "$*" in *runs/a/*) exit 3;; esac\n')
  env["CALLS"] = str(tmp_path / "calls")
  proc = subprocess.Popen(["bash", str(path)], env=env, stderr=subprocess.PIPE, text=True)
  while not (tmp_path / "calls").exists():
    time.sleep(0.05)
  proc.send_signal(signal.SIGHUP)  # the terminal that started it closes
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 1 and "failed: /w/runs/a" in err
  calls = (tmp_path / "calls").read_text()
  assert all(f"--workdir={d}" in calls for d in run_dirs)
