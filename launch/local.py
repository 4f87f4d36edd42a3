"""Run one sleepjax command as N JAX processes on this machine (a stand-in for N hosts).

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      train --config=configs/smoke.py:tiny --workdir=runs/mp

Each process gets its own devices, joins the job through a coordinator on localhost and reads
its own slice of the data; process 0 writes TensorBoard logs. Exits non-zero if any process fails.
`--platform=cpu` (the default where no GPU is visible) simulates `devices_per_process` CPU devices
per process; `--platform=gpu` gives each process its own `devices_per_process` GPUs
(of those CUDA_VISIBLE_DEVICES lists, if set); `--platform=native` leaves device selection to JAX.
"""

import argparse
import os
import socket
import subprocess
import sys


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _gpu_count() -> int:
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
  except OSError:
    return 0
  return sum(line.startswith("GPU ") for line in out.splitlines())


def cpu_device_flags(xla_flags: str, devices: int) -> str:
  """XLA_FLAGS with the simulated CPU device count set to `devices`, the other flags kept."""
  flag = "--xla_force_host_platform_device_count="
  return " ".join([f for f in xla_flags.split() if not f.startswith(flag)] + [f"{flag}{devices}"])


def _env(platform: str, i: int, devices_per_process: int) -> dict:
  if platform == "auto":
    platform = "gpu" if _gpu_count() else "cpu"
  if platform == "cpu":
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=cpu_device_flags(os.environ.get("XLA_FLAGS", ""), devices_per_process))
  if platform == "gpu":
    # process i takes its share of the GPUs this launcher was given (a sweep slot's), not of all
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(d) for d in range(_gpu_count())]
    mine = gpus[i * devices_per_process:(i + 1) * devices_per_process]
    if len(mine) < devices_per_process:
      raise ValueError(f"process {i}: {devices_per_process} GPUs each, {len(gpus)} visible")
    return dict(os.environ, JAX_PLATFORMS="cuda", CUDA_VISIBLE_DEVICES=",".join(mine))
  return dict(os.environ)


def launch(command: list[str], num_processes: int, devices_per_process: int,
           timeout_s: float | None = None, platform: str = "cpu") -> int:
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sleepjax.cli", *command, f"--coordinator=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      env=_env(platform, i, devices_per_process))
      for i in range(num_processes)]
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout=timeout_s))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      return 124
  return max(codes, key=abs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--platform", choices=("auto", "cpu", "gpu", "native"), default="auto",
                      help="auto: gpu where nvidia-smi lists GPUs, else simulated CPU devices")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="sleepjax command and its flags")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  sys.exit(launch(command, args.num_processes, args.devices_per_process,
                  platform=args.platform))


if __name__ == "__main__":
  main()
