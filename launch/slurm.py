"""SLURM: one `sbatch` array job per sweep, one array task per run (a line of runs.txt).

Each task runs `srun` with `tasks_per_node` JAX processes per node, by default one per GPU:
`jax.distributed.initialize()` finds the coordinator, the process count and its own rank in the
variables `srun` sets (SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID; see sleepjax/distributed.py)
and gives each process the GPU numbered SLURM_LOCALID, so the command line carries no addresses. A finished run (result.json) exits at once; an unfinished one
resumes from its checkpoints, so resubmitting the script, or `--requeue` after a preemption,
continues the sweep. SLURM sends SIGTERM 2 minutes before the time limit: the trainer saves and
exits, and the task requeues itself until its run is finished. With `stop_after_steps`, every
task trains at most that many steps per job (for partitions with short time limits).
"""

import os
import shlex
import shutil
import subprocess

HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one SLURM array task per run (line TASK_ID+1 of runs.txt).
# Written by `sleepjax sweep --runner=slurm`; edit freely and submit with: sbatch {script}
#
# Each task: {nodes} node(s) x {tasks_per_node} JAX process(es), {gpus_per_node} GPU(s) per node.
# jax.distributed reads the job layout from the variables srun sets (SLURM_JOB_NODELIST,
# SLURM_NTASKS, SLURM_PROCID) and gives each process GPU number SLURM_LOCALID; nothing to configure.
"""


def _sbatch_lines(s, n: int, log_dir: str) -> list[str]:
  array = f"0-{n - 1}" + (f"%{s.max_concurrent}" if s.max_concurrent else "")
  lines = [f"--job-name={s.job_name}", f"--array={array}", f"--nodes={s.nodes}",
           f"--ntasks-per-node={s.tasks_per_node}"]
  if s.gpus_per_node:
    lines.append(f"--gpus-per-node={s.gpus_per_node}")
  lines += [f"--cpus-per-task={s.cpus_per_task}", f"--mem={s.mem}", f"--time={s.time}"]
  lines += [f"--{k}={v}" for k, v in (("partition", s.partition), ("account", s.account),
                                        ("qos", s.qos)) if v]
  # SIGTERM to the training processes 2 minutes before the time limit: the trainer saves a
  # checkpoint and exits 0, and the task queues itself again (below)
  lines += [f"--output={log_dir}/%A_%a.out", "--requeue", "--open-mode=append",
            "--signal=TERM@120"]
  return [f"#SBATCH {line}" for line in lines]


def script(workdir: str, n_runs: int, settings, *, repo: str, stop_after_steps: int = 0,
           evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  """The array job as text. `settings` is `config.launch.slurm`; paths are used as given."""
  s = settings
  runs_txt = os.path.join(workdir, "runs.txt")
  path = os.path.join(workdir, "slurm", "sweep.sbatch")
  out = [HEADER.format(workdir=workdir, n=n_runs, script=path, nodes=s.nodes,
                       tasks_per_node=s.tasks_per_node, gpus_per_node=s.gpus_per_node)]
  out += _sbatch_lines(s, n_runs, os.path.join(workdir, "slurm"))
  chunk = f" --config.train.stop_after_steps={stop_after_steps}" if stop_after_steps else ""
  # no `set -u`: cluster setup scripts (module load, conda activate) often read unset variables
  out += ["", "set -eo pipefail", f"cd {shlex.quote(repo)}", *s.setup, "",
          f"RUN=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {shlex.quote(runs_txt)})",
          'if [ ! -e "$RUN/result.json" ]; then  # a finished run is not trained again',
          '  echo "task $SLURM_ARRAY_TASK_ID: $RUN on $SLURM_JOB_NODELIST"',
          f'  srun --kill-on-bad-exit=1 {sleepjax} sweep-run --config="$RUN/config.py" '
          f'--workdir="$RUN"{chunk}',
          '  if [ ! -e "$RUN/result.json" ]; then',
          "    # stopped before the end (" + ("this chunk is done, or " if stop_after_steps else "")
          + "the time limit): queue the task again, it resumes",
          '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
          "    exit 0",
          "  fi",
          "fi"]
  if evaluate:  # also for runs finished before: evaluated once
    out += ['if [ ! -e "$RUN/eval/report.json" ]; then',
            f'  srun {sleepjax} eval --config="$RUN/config.py" --workdir="$RUN"',
            "fi"]
  out += ['echo "$RUN is finished"']
  return "\n".join(out) + "\n"


def write_and_submit(workdir: str, n_runs: int, settings, *, repo: str, stop_after_steps: int = 0,
                     evaluate: bool = False, log=print) -> str:
  """Writes `<workdir>/slurm/sweep.sbatch`; submits it when `sbatch` is on PATH, else prints how."""
  os.makedirs(os.path.join(workdir, "slurm"), exist_ok=True)
  path = os.path.join(workdir, "slurm", "sweep.sbatch")
  with open(path, "w") as f:
    f.write(script(workdir, n_runs, settings, repo=repo, stop_after_steps=stop_after_steps,
                   evaluate=evaluate))
  os.chmod(path, 0o755)
  if shutil.which("sbatch"):
    out = subprocess.run(["sbatch", path], check=True, capture_output=True, text=True).stdout
    log(f"sweep: submitted {path}: {out.strip()}")
  else:
    log(f"sweep: wrote {path} (no sbatch here); on the cluster's login node run:\n  sbatch {path}")
  return path
