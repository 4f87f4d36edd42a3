"""Where a sweep keeps its runs, and how far a run got (read by every runner and the report)."""

import os

from sleepjax.config_tools import storage_path

RUNS = "runs"  # <workdir>/runs/<name>/: one run
RESULT = "result.json"  # in a run: written once it is finished


def status(run_dir: str | os.PathLike) -> str:
  """`done` (result.json), `started` (checkpoints, no result) or `new`."""
  run_dir = storage_path(run_dir)
  if (run_dir / RESULT).exists():
    return "done"
  ckpt = run_dir / "train" / "checkpoints"
  return "started" if ckpt.exists() and any(ckpt.iterdir()) else "new"
