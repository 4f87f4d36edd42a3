"""SLURM: one `sbatch` array job per submission, one array task per run.

Each task runs `srun` with `tasks_per_node` JAX processes per node, one per GPU:
`jax.distributed.initialize()` finds the coordinator, the process count and its own rank in the
variables `srun` sets (SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID; see sleepjax/distributed.py)
and gives each process the one GPU numbered SLURM_LOCALID (JAX's SLURM detection makes each process
see a single local device), so `tasks_per_node` must equal `gpus_per_node`. The batch script sets
its own JAX_PLATFORMS and XLA_FLAGS (sbatch exports the submitting shell's environment: a CPU test
shell would otherwise make the GPU job run on CPU), and `srun --cpus-per-task` gives each process
the CPUs asked for (Slurm 22.05-23.02 does not pass them from sbatch to the step).

Every submission writes a snapshot of its run list (`slurm/<stamp>/runs.txt`) that its tasks
index, so expanding the sweep again never moves a queued or requeued task onto another run. A
finished run (result.json) exits at once; an unfinished one resumes from its checkpoints. SLURM
sends SIGTERM 2 minutes before the time limit: the trainer saves and exits, and the task requeues
itself while its run made progress (a task that ends without a new checkpoint stops with an
error instead of requeueing forever). `sweep-run` holds a lease on its run (sleepjax/sweep/lease.py):
a second array over the same runs refuses the ones another live job trains.
"""

import os
import shlex
import shutil
import subprocess
import time

HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one SLURM array task per run (line TASK_ID+1 of {runs_txt}).
# Written by `sleepjax sweep --runner=slurm`; edit freely and submit with: sbatch {script}
#
# Each task: {nodes} node(s) x {tasks_per_node} JAX process(es), {gpus_per_node} GPU(s) per node.
# jax.distributed reads the job layout from the variables srun sets (SLURM_JOB_NODELIST,
# SLURM_NTASKS, SLURM_PROCID) and gives each process GPU number SLURM_LOCALID; nothing to configure.
"""

# The newest checkpoint step of $RUN (empty: none): a requeue needs progress since the last one.
LATEST = ("latest() { ls \"$RUN/train/checkpoints\" 2>/dev/null | grep -E '^[0-9]+$' "
          "| sort -n | tail -n 1 || true; }")


def check_binding(s):
  """One JAX process per GPU: JAX's SLURM detection gives process i only GPU SLURM_LOCALID."""
  if s.gpus_per_node and s.tasks_per_node != s.gpus_per_node:
    raise ValueError(
        f"launch.slurm.tasks_per_node={s.tasks_per_node} != gpus_per_node={s.gpus_per_node}: "
        "jax.distributed gives each SLURM task the one GPU numbered SLURM_LOCALID, so the other "
        "GPUs would sit idle; run one task per GPU")


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


def script(workdir: str, n_runs: int, settings, *, repo: str, runs_txt: str | None = None,
           stop_after_steps: int = 0, evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  """The array job as text. `settings` is `config.launch.slurm`; paths are used as given;
  `runs_txt`: the run list the tasks index (default `<workdir>/runs.txt`)."""
  s = settings
  check_binding(s)
  runs_txt = runs_txt or os.path.join(workdir, "runs.txt")
  path = os.path.join(os.path.dirname(runs_txt), "sweep.sbatch")
  out = [HEADER.format(workdir=workdir, n=n_runs, script=path, nodes=s.nodes, runs_txt=runs_txt,
                       tasks_per_node=s.tasks_per_node, gpus_per_node=s.gpus_per_node)]
  out += _sbatch_lines(s, n_runs, os.path.join(workdir, "slurm"))
  chunk = f" --config.train.stop_after_steps={stop_after_steps}" if stop_after_steps else ""
  srun = "srun --kill-on-bad-exit=1 --cpus-per-task=$SLURM_CPUS_PER_TASK"
  # no `set -u`: cluster setup scripts (module load, conda activate) often read unset variables
  out += ["", "set -eo pipefail", f"cd {shlex.quote(repo)}", *s.setup,
          "# this job's platform, not the submitting shell's (sbatch exports its environment)",
          f"export JAX_PLATFORMS={shlex.quote(s.jax_platforms)}",
          f"export XLA_FLAGS={shlex.quote(s.xla_flags)}", "",
          f"RUN=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {shlex.quote(runs_txt)})",
          LATEST,
          'if [ ! -e "$RUN/result.json" ]; then  # a finished run is not trained again',
          '  echo "task $SLURM_ARRAY_TASK_ID: $RUN on $SLURM_JOB_NODELIST"',
          "  BEFORE=$(latest)",
          f'  {srun} {sleepjax} sweep-run --config="$RUN/config.json" '
          f'--workdir="$RUN"{chunk}',
          '  if [ ! -e "$RUN/result.json" ]; then',
          '    if [ "$(latest)" = "$BEFORE" ]; then',
          '      echo "$RUN: no new checkpoint since step ${BEFORE:-0}; not requeueing" >&2',
          "      exit 1",
          "    fi",
          "    # stopped before the end (" + ("this chunk is done, or " if stop_after_steps else "")
          + "the time limit): queue the task again, it resumes",
          '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
          "    exit 0",
          "  fi",
          "fi"]
  if evaluate:  # also for runs finished before: evaluated once
    out += ['if [ ! -e "$RUN/eval/report.json" ]; then',
            f'  {srun} {sleepjax} eval --config="$RUN/config.json" --workdir="$RUN"',
            "fi"]
  out += ['echo "$RUN is finished"']
  return "\n".join(out) + "\n"


def write_and_submit(workdir: str, run_dirs: list[str], settings, *, repo: str,
                     stop_after_steps: int = 0, evaluate: bool = False, submit: bool = False,
                     log=print) -> str:
  """Writes `<workdir>/slurm/<stamp>/{runs.txt,sweep.sbatch}` (this submission's snapshot of the
  run list and its script); submits it with `sbatch` only when `submit`."""
  check_binding(settings)
  folder = os.path.join(workdir, "slurm", time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
  k = 1
  while os.path.exists(folder + (f".{k}" if k > 1 else "")):
    k += 1
  folder += f".{k}" if k > 1 else ""
  os.makedirs(folder)
  runs_txt = os.path.join(folder, "runs.txt")
  with open(runs_txt, "w") as f:
    f.write("".join(d + "\n" for d in run_dirs))
  path = os.path.join(folder, "sweep.sbatch")
  with open(path, "w") as f:
    f.write(script(workdir, len(run_dirs), settings, repo=repo, runs_txt=runs_txt,
                   stop_after_steps=stop_after_steps, evaluate=evaluate))
  os.chmod(path, 0o755)
  if not submit:
    log(f"sweep: wrote {path} (not submitted); submit it on the cluster's login node with:\n"
        f"  sbatch {path}\nor pass --submit")
    return path
  if not shutil.which("sbatch"):
    raise ValueError(f"--submit: no sbatch on PATH here; wrote {path}, submit it where SLURM is")
  out = subprocess.run(["sbatch", path], check=True, capture_output=True, text=True).stdout
  log(f"sweep: submitted {path}: {out.strip()}")
  return path
