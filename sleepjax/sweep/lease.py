"""One writer per run: a lease file naming the job that trains a run.

`sweep-run` takes `<run>/lease.json` before training: {owner, job, scheduler, since}. A run leased
by another job that the scheduler still lists is refused (two jobs would write one Orbax
directory); a lease whose job is gone (finished, cancelled, preempted for good) is taken over.
The job id is $SLEEPJAX_JOB_ID where the launcher sets it (xpk: the workload's name, the same
across its restarts), else the scheduler's (SLURM's array task `<array job>_<task>` keeps its id
across requeues, so a requeued task resumes its own lease), else `<host>:<pid>` of process 0.
Process 0 checks and writes the lease; the others follow its verdict. Deleting lease.json
releases a run by hand.
"""

import json
import os
import shutil
import socket
import subprocess
import time

from sleepjax.config_tools import storage_path

LEASE = "lease.json"


class RunLeasedError(RuntimeError):
  """Another live job holds the run's lease."""


def job_identity(env=None, pid: int | None = None) -> dict:
  """{scheduler, job}: who is running this process, as its scheduler names it."""
  env = os.environ if env is None else env
  if env.get("SLEEPJAX_JOB_ID"):
    return {"scheduler": "named", "job": env["SLEEPJAX_JOB_ID"]}
  if "SLURM_JOB_ID" in env:
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
           if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env else env["SLURM_JOB_ID"])
    return {"scheduler": "slurm", "job": job}
  return {"scheduler": "local", "job": f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"}


def job_alive(lease: dict) -> bool:
  """Whether the lease's job still runs, as far as this host can tell (unknown counts as alive)."""
  scheduler, job = lease.get("scheduler"), str(lease.get("job", ""))
  if scheduler == "slurm" and shutil.which("squeue"):
    # squeue lists pending, running and requeued jobs; a finished one is gone (or errors out)
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                         text=True, check=False)
    return out.returncode == 0 and bool(out.stdout.strip())
  if scheduler == "local":
    host, _, pid = job.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
      try:
        os.kill(int(pid), 0)
      except ProcessLookupError:
        return False
      except PermissionError:
        return True
      return True
  return True


def read(run_dir) -> dict | None:
  path = storage_path(run_dir) / LEASE
  return json.loads(path.read_text()) if path.exists() else None


def check(run_dir, me: dict, alive=job_alive) -> dict | None:
  """Raises RunLeasedError if another live job holds the run; returns the lease found."""
  held = read(run_dir)
  if held and held.get("job") != me["job"] and alive(held):
    raise RunLeasedError(
        f"{storage_path(run_dir)} is being trained by {held.get('scheduler')} job "
        f"{held.get('job')} (owner {held.get('owner')}, since {held.get('since')}); two jobs "
        f"would write one checkpoint directory. Wait for it, cancel it, or delete {LEASE} if "
        "that job is gone.")
  return held


def acquire(run_dir, me: dict, alive=job_alive, write: bool = True) -> dict:
  """Checks the lease, then (process 0: `write`) takes it for `me`; returns the lease."""
  held = check(run_dir, me, alive)
  lease = {**me, "owner": f"{socket.gethostname()}:{os.getpid()}",
           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  if write:
    if held and held.get("job") != me["job"]:
      print(f"sweep-run: taking over the lease of {held.get('scheduler')} job {held.get('job')} "
            "(no longer running)")
    (storage_path(run_dir) / LEASE).write_text(json.dumps(lease, indent=1) + "\n")
  return lease


def release(run_dir, me: dict):
  """Drops the lease if it is still `me`'s."""
  held = read(run_dir)
  if held and held.get("job") == me["job"]:
    (storage_path(run_dir) / LEASE).unlink()
