"""Run one sleepjax command as N JAX processes on this machine (a stand-in for N hosts).

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      train --config=configs/smoke.py:tiny --workdir=runs/mp

Each process gets its own CPU devices, joins the job through a coordinator on localhost and reads
its own slice of the data; process 0 writes TensorBoard logs. Exits non-zero if any process fails.
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


def launch(command: list[str], num_processes: int, devices_per_process: int,
           timeout_s: float | None = None) -> int:
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sleepjax.cli", *command, f"--coordinator=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"], env=env)
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
  parser.add_argument("command", nargs=argparse.REMAINDER, help="sleepjax command and its flags")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  sys.exit(launch(command, args.num_processes, args.devices_per_process))


if __name__ == "__main__":
  main()
