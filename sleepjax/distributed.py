"""Multi-process start-up: `jax.distributed.initialize` from flags or the cluster's environment."""

import os

import jax
from absl import flags, logging

COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0, for multi-process runs outside SLURM / TPU pods.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")


def _cluster_detected() -> bool:
  """SLURM with several tasks or a multi-host TPU slice: JAX finds the coordinator itself."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  return slurm or tpu_pod


def initialize():
  """Joins the job before any other JAX call; a no-op for a single process."""
  if COORDINATOR.value:
    if NUM_PROCESSES.value is None or PROCESS_ID.value is None:
      raise ValueError("--coordinator needs --num_processes and --process_id")
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
