"""The local runner: a sweep's unfinished runs on this machine, `launch.local.parallel` at a time,
each on its own slice of the GPUs (or its own simulated CPU devices)."""

import os
import shlex
import subprocess
import sys
import time

from sleepjax.sweep.layout import status


def _gpus_per_process(launch) -> int:
  local = launch.local
  return local.gpus // max(1, local.parallel) // max(1, local.processes)


def member_command(run_dir: str, launch, python: str = sys.executable) -> list[str]:
  """The command that runs one member here (several JAX processes through launch/local.py)."""
  args = ["sweep-run", f"--config={run_dir}/config.py", f"--workdir={run_dir}"]
  if launch.stop_after_steps:
    args.append(f"--config.train.stop_after_steps={launch.stop_after_steps}")
  local = launch.local
  if local.processes > 1:
    # each process takes its share of the slot's GPUs (CUDA_VISIBLE_DEVICES of _slot_env)
    platform, per = (("gpu", _gpus_per_process(launch)) if local.gpus
                     else ("cpu", local.cpu_devices or 4))
    return [python, "-m", "launch.local", f"--num_processes={local.processes}",
            f"--devices_per_process={per}", f"--platform={platform}", "--", *args]
  return [python, "-m", "sleepjax.cli", *args]


def _slot_env(slot: int, launch) -> dict:
  """Environment for a run in parallel slot `slot`: its own GPUs, or its own CPU device count."""
  env = dict(os.environ)
  local = launch.local
  if local.gpus:
    per = local.gpus // local.parallel
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(slot * per, (slot + 1) * per))
  elif local.cpu_devices:
    from launch.local import cpu_device_flags  # pylint: disable=g-import-not-at-top
    env["XLA_FLAGS"] = cpu_device_flags(env.get("XLA_FLAGS", ""), local.cpu_devices)
  return env


def _pending(run_dir: str, launch) -> bool:
  """Not finished, or (launch.eval) finished without its eval report, as the SLURM script checks."""
  return status(run_dir) != "done" or bool(launch.eval) and not os.path.exists(
      os.path.join(run_dir, "eval", "report.json"))


def _check_slices(launch, parallel: int):
  local = launch.local
  if local.gpus and (local.gpus % parallel or _gpus_per_process(launch) < 1
                     or (local.gpus // parallel) % max(1, local.processes)):
    raise ValueError(f"launch.local.gpus={local.gpus} does not split into "
                     f"launch.local.parallel={parallel} slots of launch.local.processes="
                     f"{local.processes} processes with equal GPUs each")


def run_local(runs: list[dict], launch, log=print) -> dict[str, int]:
  """Runs the unfinished runs here, `launch.local.parallel` at a time; returns exit codes by name.

  Each run's output goes to `<run>/log.txt`. Finished runs are skipped (with launch.eval, only
  once evaluated); started ones resume.
  """
  todo = [r for r in runs if _pending(r["dir"], launch)]
  finished = sum(status(r["dir"]) == "done" for r in runs)
  log(f"sweep: {len(runs)} runs, {finished} finished, {len(todo)} to run"
      + (" or evaluate" if launch.eval else ""))
  if launch.local.max_runs:
    todo = todo[:launch.local.max_runs]
  parallel = max(1, launch.local.parallel)
  _check_slices(launch, parallel)
  codes, active, free = {}, {}, list(range(parallel))
  queue = list(todo)
  while queue or active:
    while queue and free:
      run, slot = queue.pop(0), free.pop(0)
      was = status(run["dir"])
      logf = open(os.path.join(run["dir"], "log.txt"), "a")  # pylint: disable=consider-using-with
      cmds = [member_command(run["dir"], launch)]
      if launch.eval:
        cmds.append([sys.executable, "-m", "sleepjax.cli", "eval",
                     f"--config={run['dir']}/config.py", f"--workdir={run['dir']}"])
      script = " && ".join(shlex.join(c) for c in cmds)
      proc = subprocess.Popen(script, shell=True, stdout=logf, stderr=subprocess.STDOUT,
                              env=_slot_env(slot, launch))
      active[proc] = (run, slot, logf)
      verb = {"started": "resume", "done": "eval  "}.get(was, "start ")
      log(f"sweep: {verb} {run['name']} (slot {slot})")
    time.sleep(0.2)
    for proc in [p for p in active if p.poll() is not None]:
      run, slot, logf = active.pop(proc)
      logf.close()
      free.append(slot)
      codes[run["name"]] = proc.returncode
      state = status(run["dir"])
      log(f"sweep: {run['name']}: " + (state if proc.returncode == 0 else
                                       f"failed (exit {proc.returncode}), see {run['dir']}/log.txt"))
  return codes
