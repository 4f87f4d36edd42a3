"""TPU slices: `xpk workload create` per run (GKE), or `gcloud ... tpu-vm ssh --worker=all` (TPU VMs).

Every host of a slice runs the same command; `jax.distributed.initialize()` finds the slice's
coordinator and its own worker id by itself (TPU metadata / MEGASCALE_* for multislice; sleepjax
calls it on every Cloud TPU host), so the commands carry no addresses. The workdir must be a path
every host sees: a `gs://` URI (read and written through etils.epath) or a Filestore / gcsfuse
mount (a flat bucket through gcsfuse needs `--config.train.checkpoint_commit_file=true`).

xpk: the image is built once per script run from launch/Dockerfile (dependencies pinned by
requirements.lock, `.dockerignore` keeps .venv and runs/ out) and every workload uses it. xpk
restarts a JobSet only for exit codes 42 and 127-255 (its pod failure policy), so a workload exits
42 while its run is unfinished (preempted, time-limited, a stop_after_steps chunk done): it resumes
from its checkpoints, up to `max_restarts` times. Workload names are `<prefix>-<hash>-<index>`,
the hash of the workdir and the script's time of writing: no two sweeps or submissions share a
name (xpk would offer to delete the other workload). A workload's name is also its run's lease
id (sleepjax/sweep/lease.py): its restarts resume the run, while another submission's workload
for that run stops at once, without a restart (delete `<run>/lease.json` once the first workload
is gone for good).
With `--num-slices` > 1 the mesh splits `data` across the slices (`sharding.device_grid`,
`mesh.dcn_data`: -1 follows the slices the workload gets).
"""

import hashlib
import os
import re
import shlex
import time

from etils import epath

NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # xpk's workload name pattern
MAX_NAME = 40  # xpk refuses longer workload names
UNFINISHED = 42  # an exit code xpk's JobSet restarts on

XPK_HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one xpk workload per run on cluster {cluster} ({tpu_type} x {slices}).
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash {script}
# Kueue queues the workloads; `xpk workload list --cluster {cluster}` shows them. Resubmitting a
# run's workload after it was preempted or deleted resumes it from its checkpoints.
set -euo pipefail
"""

TPU_VM_HEADER = """#!/bin/bash
# Sweep {workdir}: {n} runs, one after another on the TPU VM slice {tpu_name}, every worker at once.
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run (it survives a closed terminal):
#   nohup bash {script} > tpu_vm.log 2>&1 &
# Finished runs are skipped and started ones resume, so run it again after a preemption; a failed
# run does not stop the others (they are listed at the end).
set -uo pipefail
trap '' HUP  # a dropped ssh session to this machine must not kill the sweep
"""


def _remote(setup, run: str, stop_after_steps: int, evaluate: bool, sleepjax: str,
            job: str = "") -> str:
  """The command on every host; `run` as the shell should see it (quoted, or "$RUN"). `job`:
  an xpk workload's name, its lease id across restarts (sleepjax/sweep/lease.py)."""
  chunk = f" --config.train.stop_after_steps={stop_after_steps}" if stop_after_steps else ""
  env = f"SLEEPJAX_JOB_ID={job} " if job else ""
  steps = [*setup, f"{env}{sleepjax} sweep-run --config={run}/config.json --workdir={run}{chunk}"]
  if job:  # unfinished: ask xpk for a restart rather than completing the JobSet
    steps.append(f"{{ test -e {run}/result.json || exit {UNFINISHED}; }}")
  if evaluate:
    steps.append(f"{sleepjax} eval --config={run}/config.json --workdir={run}")
  return " && ".join(steps)


def submission_hash(workdir: str, stamp: str) -> str:
  return hashlib.sha256(f"{os.fspath(workdir)}|{stamp}".encode()).hexdigest()[:6]


def workload_name(prefix: str, workdir: str, index: int, stamp: str = "") -> str:
  """`<prefix>-<hash of workdir and stamp>-<index>`, valid for xpk (prefix "": the workdir's own
  name, cut to fit)."""
  prefix = prefix or os.path.basename(os.fspath(workdir).rstrip("/"))
  tail = f"-{submission_hash(workdir, stamp)}-{index:03d}"
  clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", prefix.lower()))
  clean = re.sub(r"^[^a-z]+", "", clean)[:MAX_NAME - len(tail)].rstrip("-") or "sweep"
  name = clean + tail
  assert NAME.fullmatch(name) and len(name) <= MAX_NAME, name
  return name


def image(s, workdir: str, stamp: str = "") -> str:
  return (f"{s.image_repository or f'gcr.io/{s.project}/sleepjax'}:"
          f"sweep-{submission_hash(workdir, stamp)}")


def xpk_script(workdir: str, run_dirs: list[str], settings, *, repo: str, stamp: str = "",
               stop_after_steps: int = 0, evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  """The `xpk workload create` commands, after building and pushing the image once (unless
  `docker_image` names a prebuilt one); `stamp` makes this submission's names its own."""
  s = settings
  path = os.path.join(workdir, "xpk", "workloads.sh")
  out = [XPK_HEADER.format(workdir=workdir, n=len(run_dirs), cluster=s.cluster,
                           tpu_type=s.tpu_type, slices=s.num_slices, script=path)]
  if s.docker_image:
    out += [f"IMAGE={shlex.quote(s.docker_image)}", ""]
  else:
    out += ["# one image for every workload: the checkout's code on the pinned dependencies",
            f"IMAGE={shlex.quote(image(s, workdir, stamp))}",
            f"docker build --build-arg BASE={shlex.quote(s.base_docker_image)} "
            f"-f {shlex.quote(os.path.join(repo, 'launch', 'Dockerfile'))} -t \"$IMAGE\" "
            f"{shlex.quote(repo)}",
            'docker push "$IMAGE"', ""]
  for i, run in enumerate(run_dirs):
    name = workload_name(s.workload_prefix, workdir, i, stamp)
    command = _remote(s.image_setup, shlex.quote(run), stop_after_steps, evaluate, sleepjax, name)
    out += [f"# {os.path.basename(run)}",
            "xpk workload create \\",
            f"  --cluster={s.cluster} --project={s.project} --zone={s.zone} \\",
            f"  --workload={name} \\",
            f"  --tpu-type={s.tpu_type} --num-slices={s.num_slices} \\",
            f"  --docker-image=\"$IMAGE\" --priority={s.priority} --max-restarts={s.max_restarts} \\",
            f"  --termination-grace-period-seconds={s.termination_grace_s} \\",
            f"  --command={shlex.quote(command)}", ""]
  return "\n".join(out)


def tpu_vm_script(workdir: str, settings, *, run_dirs: list[str], stop_after_steps: int = 0,
                  evaluate: bool = False, sleepjax: str = "sleepjax") -> str:
  """The runs one after another on every worker; the run list is this script's own snapshot."""
  s = settings
  path = os.path.join(workdir, "xpk", "tpu_vm.sh")
  tpu = s.tpu_name or "my-tpu"
  command = _remote(s.vm_setup, "$RUN", stop_after_steps, evaluate, sleepjax)
  out = [TPU_VM_HEADER.format(workdir=workdir, n=len(run_dirs), tpu_name=tpu, script=path),
         "RUNS=(", *(f"  {shlex.quote(d)}" for d in run_dirs), ")", "FAILED=()",
         'for RUN in "${RUNS[@]}"; do',
         '  echo "== $RUN"',
         f"  if ! gcloud compute tpus tpu-vm ssh {tpu} --project={s.project} --zone={s.zone} \\",
         f"      --worker=all --command=\"{command}\" < /dev/null; then",
         '    echo "== $RUN failed; going on with the next run" >&2',
         '    FAILED+=("$RUN")',
         "  fi",
         "done",
         'if [ "${#FAILED[@]}" -gt 0 ]; then',
         '  printf "failed: %s\\n" "${FAILED[@]}" >&2',
         "  exit 1",
         "fi", ""]
  return "\n".join(out)


def write(workdir: str, run_dirs: list[str], settings, *, repo: str, stop_after_steps: int = 0,
          evaluate: bool = False, log=print) -> list[str]:
  """Writes `<workdir>/xpk/workloads.sh` and `<workdir>/xpk/tpu_vm.sh` (a gs:// workdir too);
  runs neither."""
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  folder = epath.Path(workdir) / "xpk"
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, text in (
      ("workloads.sh", xpk_script(workdir, run_dirs, settings, repo=repo, stamp=stamp,
                                  stop_after_steps=stop_after_steps, evaluate=evaluate)),
      ("tpu_vm.sh", tpu_vm_script(workdir, settings, run_dirs=run_dirs,
                                  stop_after_steps=stop_after_steps, evaluate=evaluate))):
    path = folder / name
    path.write_text(text)
    if "://" not in os.fspath(path):
      os.chmod(path, 0o755)
    paths.append(os.fspath(path))
  log(f"sweep: wrote {paths[0]} (GKE: one `xpk workload create` per run) and {paths[1]} "
      "(TPU VMs: `gcloud compute tpus tpu-vm ssh --worker=all`); run one with bash"
      + (" after `gcloud storage cp` to this machine" if "://" in paths[0] else ""))
  return paths
