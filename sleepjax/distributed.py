"""Multi-process start-up: `jax.distributed.initialize` from flags or the cluster's environment.

Who joins a job, checked in this order (`plan`):

  --coordinator given                     explicit: the flags' coordinator, count and rank
  SLURM with SLURM_NTASKS > 1             auto: JAX reads srun's variables
  a Cloud TPU host (TPU chips on the PCI  auto, always: JAX's GCE TPU detection finds the
    bus, or TPU_WORKER_HOSTNAMES /          workers through the metadata server, which sets no
    MEGASCALE_* set) unless JAX_PLATFORMS   variable we could test for, so a multi-host TPU VM
    excludes tpu                            slice (`gcloud ... ssh --worker=all`) must not wait
                                            for one; one host joins a job of one (as MaxText does)
  anything else                           none: a single process
"""

import os

import jax
from absl import flags, logging

COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0, for multi-process runs outside SLURM / TPU pods.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")


def _tpu_chips() -> int:
  """TPU chips on this host's PCI bus, as JAX counts them before any backend starts."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except Exception:  # pylint: disable=broad-except  (a JAX without the helper: ask the env)
    return 0


def plan(env=None, tpu_chips: int | None = None, coordinator: str | None = None) -> str:
  """`explicit`, `auto` (jax.distributed.initialize() finds the cluster) or `none`."""
  env = os.environ if env is None else env
  if coordinator:
    return "explicit"
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return "auto"
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.split(","):
    return "none"
  tpu_env = "TPU_WORKER_HOSTNAMES" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env
  chips = _tpu_chips() if tpu_chips is None else tpu_chips
  return "auto" if tpu_env or chips > 0 else "none"


def initialize():
  """Joins the job before any other JAX call; a no-op for a single process."""
  how = plan(coordinator=COORDINATOR.value)
  if how == "explicit":
    if NUM_PROCESSES.value is None or PROCESS_ID.value is None:
      raise ValueError("--coordinator needs --num_processes and --process_id")
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  elif how == "auto":
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
