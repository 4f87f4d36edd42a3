"""The two sections a sweep file adds to a config: `sweep` (the axes) and `launch` (the runners),
each key's meaning the trailing comment on its line (`sleepjax config` and the config reference
read them, as they read configs/common.py's)."""

import ml_collections


def launch_config() -> ml_collections.ConfigDict:
  """Runner settings a sweep file puts under `config.launch` (all overridable from the CLI)."""
  c = ml_collections.ConfigDict()
  c.launch = ml_collections.ConfigDict()
  c.launch.stop_after_steps = 0  # sweeps: train at most this many steps per job, then requeue (0 = all)
  c.launch.eval = False  # sweeps: also run `sleepjax eval` (linear probe) after each run

  c.launch.local = ml_collections.ConfigDict()
  c.launch.local.parallel = 1  # local runner: runs at once, each on its share of the devices
  c.launch.local.gpus = 0  # local runner: GPUs shared out among parallel runs (0: CPU)
  c.launch.local.cpu_devices = 0  # local runner: simulated CPU devices per run (0: inherit XLA_FLAGS)
  c.launch.local.processes = 1  # local runner: JAX processes per run (launch/local.py)
  c.launch.local.max_runs = 0  # local runner: start at most this many runs in this invocation (0 = all)

  c.launch.slurm = ml_collections.ConfigDict()
  c.launch.slurm.job_name = "sleepjax-sweep"  # SLURM --job-name
  c.launch.slurm.partition = ""  # SLURM --partition
  c.launch.slurm.account = ""  # SLURM --account
  c.launch.slurm.qos = ""  # SLURM --qos
  c.launch.slurm.time = "24:00:00"  # SLURM --time limit per array task
  c.launch.slurm.nodes = 1  # SLURM nodes per run
  # One JAX process per GPU: jax.distributed gives process i of a node the GPU SLURM_LOCALID=i.
  c.launch.slurm.gpus_per_node = 8  # SLURM GPUs per node (one JAX process per GPU)
  c.launch.slurm.tasks_per_node = 8  # SLURM tasks (JAX processes) per node: one per GPU
  c.launch.slurm.cpus_per_task = 8  # SLURM --cpus-per-task
  c.launch.slurm.mem = "0"  # SLURM --mem
  c.launch.slurm.jax_platforms = "cuda"  # the job's own JAX_PLATFORMS (the submitting shell's is replaced)
  c.launch.slurm.xla_flags = ""  # the job's own XLA_FLAGS (the submitting shell's are replaced)
  c.launch.slurm.max_concurrent = 0  # SLURM array throttle (%N: runs at once; 0 = no limit)
  c.launch.slurm.setup = ("source .venv/bin/activate",)  # shell lines run before srun (modules, venv activation)

  c.launch.xpk = ml_collections.ConfigDict()
  c.launch.xpk.cluster = "my-cluster"  # xpk GKE cluster name
  c.launch.xpk.project = "my-project"  # Google Cloud project
  c.launch.xpk.zone = "us-central2-b"  # Google Cloud zone
  c.launch.xpk.tpu_type = "v5p-32"  # TPU slice type, e.g. v5p-128
  c.launch.xpk.num_slices = 1  # TPU slices per run (multislice)
  c.launch.xpk.docker_image = ""  # xpk --docker-image: a prebuilt image (nothing is built)
  c.launch.xpk.base_docker_image = "python:3.11"  # base of the image workloads.sh builds once (launch/Dockerfile)
  c.launch.xpk.priority = "medium"  # xpk workload priority
  c.launch.xpk.max_restarts = 20  # xpk restarts of a workload that exits 42 (unfinished) or is preempted
  c.launch.xpk.termination_grace_s = 300  # xpk --termination-grace-period-seconds: SIGTERM to kill, for the last save
  c.launch.xpk.workload_prefix = ""  # prefix of xpk workload names ("": the workdir's name)
  c.launch.xpk.image_repository = ""  # where the built image is pushed ("": gcr.io/<project>/sleepjax)
  c.launch.xpk.tpu_name = ""  # TPU VM name (tpu_vm.sh: gcloud ... tpu-vm ssh --worker=all)
  # Shell steps before training: inside the workload's image (built once by workloads.sh from
  # launch/Dockerfile, pinned by requirements.lock) and on each TPU VM.
  c.launch.xpk.image_setup = ()  # shell lines run in the container before sleepjax
  c.launch.xpk.vm_setup = ("cd ~/sleepjax", "source .venv/bin/activate")  # shell lines run on each TPU VM worker before sleepjax
  return c.launch


def sweep_section(**axes) -> ml_collections.ConfigDict:
  """`config.sweep` for `grid`: sizes x modality subsets x subject fractions x budgets x seeds."""
  c = ml_collections.ConfigDict()
  c.sweep = ml_collections.ConfigDict()
  c.sweep.sizes = ()  # rows of the family's size table swept
  c.sweep.modality_counts = ()  # modality-subset sizes swept
  c.sweep.subsets_per_count = 1  # deterministic modality subsets per count
  c.sweep.modalities = ()  # modalities the subsets are drawn from (default: data.modalities, else prep.modalities)
  c.sweep.subject_fractions = (1.0,)  # fractions of training subjects swept (data scaling)
  c.sweep.budgets_flops = ()  # FLOP budgets; a run's steps = budget / analytic FLOPs per step
  c.sweep.seeds = (0,)  # seeds per configuration
  unknown = set(axes) - set(c.sweep)
  if unknown:
    raise KeyError(f"sweep_section: unknown axes {sorted(unknown)}")
  return ml_collections.ConfigDict({**c.sweep.to_dict(), **axes})
