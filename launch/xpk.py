"""TPU slices: `xpk workload create` per run (GKE), or `gcloud ... tpu-vm ssh --worker=all` (TPU VMs).

Every host of a slice runs the same command; `jax.distributed.initialize()` finds the slice's
coordinator and its own worker id by itself (TPU metadata / MEGASCALE_* for multislice), so the
commands carry no addresses. The workdir must be a path every host sees (a Filestore or GCS-fuse
mount). Finished runs return at once and started ones resume, so re-running a script after a
preemption continues the sweep; xpk also restarts a preempted workload `max_restarts` times.
With `--num-slices` > 1 the mesh splits `data` across the slices (`sharding.device_grid`,
`mesh.dcn_data`: -1 follows the slices the workload gets).
"""

import os
import shlex

XPK_HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one xpk workload per run on cluster {cluster} ({tpu_type} x {slices}).
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash {script}
# Kueue queues the workloads; `xpk workload list --cluster {cluster}` shows them. Resubmitting a
# run's workload after it was preempted or deleted resumes it from its checkpoints.
set -euo pipefail
"""

TPU_VM_HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one after another on the TPU VM slice {tpu_name}, every worker at once.
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash {script}
# Finished runs are skipped and started ones resume, so run it again after a preemption.
set -euo pipefail
"""


def _remote(setup, run: str, stop_after_steps: int, evaluate: bool, sleepjax: str) -> str:
  chunk = f" --config.train.stop_after_steps={stop_after_steps}" if stop_after_steps else ""
  steps = [*setup, f"{sleepjax} sweep-run --config={run}/config.py --workdir={run}{chunk}"]
  if evaluate:
    steps.append(f"{sleepjax} eval --config={run}/config.py --workdir={run}")
  return " && ".join(steps)


def workload_name(prefix: str, index: int) -> str:
  """xpk/Kubernetes names: lowercase letters, digits and '-', short."""
  clean = "".join(c if c.isalnum() else "-" for c in prefix.lower()).strip("-")[:30]
  return f"{clean}-{index:03d}"


def xpk_script(workdir: str, run_dirs: list[str], settings, *, repo: str,
               stop_after_steps: int = 0, evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  """The `xpk workload create` commands; without a prebuilt image, xpk layers `repo` (its
  --script-dir) onto the base image and runs the command there, wherever the script is run from."""
  s = settings
  path = os.path.join(workdir, "xpk", "workloads.sh")
  out = [XPK_HEADER.format(workdir=workdir, n=len(run_dirs), cluster=s.cluster,
                           tpu_type=s.tpu_type, slices=s.num_slices, script=path)]
  image = (f"--docker-image={s.docker_image}" if s.docker_image else
           f"--base-docker-image={s.base_docker_image} --script-dir={shlex.quote(repo)}")
  for i, run in enumerate(run_dirs):
    command = _remote(s.image_setup, run, stop_after_steps, evaluate, sleepjax)
    out += [f"# {os.path.basename(run)}",
            "xpk workload create \\",
            f"  --cluster={s.cluster} --project={s.project} --zone={s.zone} \\",
            f"  --workload={workload_name(s.workload_prefix, i)} \\",
            f"  --tpu-type={s.tpu_type} --num-slices={s.num_slices} \\",
            f"  {image} --priority={s.priority} --max-restarts={s.max_restarts} \\",
            f"  --command={shlex.quote(command)}", ""]
  return "\n".join(out)


def tpu_vm_script(workdir: str, settings, *, n_runs: int, stop_after_steps: int = 0,
                  evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  s = settings
  path = os.path.join(workdir, "xpk", "tpu_vm.sh")
  tpu = s.tpu_name or "my-tpu"
  command = _remote(s.vm_setup, "$RUN", stop_after_steps, evaluate, sleepjax)
  out = [TPU_VM_HEADER.format(workdir=workdir, n=n_runs, tpu_name=tpu, script=path),
         f"while read -r RUN; do",
         '  echo "== $RUN"',
         f"  gcloud compute tpus tpu-vm ssh {tpu} --project={s.project} --zone={s.zone} \\",
         f"    --worker=all --command=\"{command}\" < /dev/null  # ssh must not eat runs.txt",
         f"done < {shlex.quote(os.path.join(workdir, 'runs.txt'))}", ""]
  return "\n".join(out)


def write(workdir: str, run_dirs: list[str], settings, *, repo: str, stop_after_steps: int = 0,
          evaluate: bool = False, log=print) -> list[str]:
  """Writes `<workdir>/xpk/workloads.sh` and `<workdir>/xpk/tpu_vm.sh`; runs neither."""
  os.makedirs(os.path.join(workdir, "xpk"), exist_ok=True)
  paths = []
  for name, text in (
      ("workloads.sh", xpk_script(workdir, run_dirs, settings, repo=repo,
                                  stop_after_steps=stop_after_steps, evaluate=evaluate)),
      ("tpu_vm.sh", tpu_vm_script(workdir, settings, n_runs=len(run_dirs),
                                  stop_after_steps=stop_after_steps, evaluate=evaluate))):
    path = os.path.join(workdir, "xpk", name)
    with open(path, "w") as f:
      f.write(text)
    os.chmod(path, 0o755)
    paths.append(path)
  log(f"sweep: wrote {paths[0]} (GKE: one `xpk workload create` per run) and {paths[1]} "
      "(TPU VMs: `gcloud compute tpus tpu-vm ssh --worker=all`); run one with bash")
  return paths
