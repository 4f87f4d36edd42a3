"""Where a step's device time goes: a jax.profiler trace of a few steps, summarised by op.

  sleepjax bench step --config=configs/sleep2vec.py:dense --profile_steps=3 --workdir=runs/bench

writes the trace under <workdir>/bench/profile (open it in Perfetto or TensorBoard's profiler) and
`<workdir>/bench/profile_ops.json`: device time per stream and the costliest ops, grouped into
matmul (cuBLAS/CUTLASS gemms), attention (cuDNN/flash kernels), collectives and the rest
(XLA's own fusions: norms, softmax, elementwise, reductions). Reading the perfetto JSON needs no
profiler plugin, so the summary works on a bare accelerator host.
"""

import collections
import glob
import gzip
import json
import os

import jax

# Kernel-name fragments per category, checked in order (first match wins).
CATEGORIES = (
    ("attention", ("fmha", "flash", "cudnn", "attention")),
    ("matmul", ("gemm", "cublas", "cutlass", "nvjet", "xmma", "dot", "matmul", "convolution")),
    ("collective", ("all-reduce", "all_reduce", "allreduce", "all-gather", "all_gather",
                    "reduce-scatter", "reduce_scatter", "nccl", "collective")),
)


def category(name: str) -> str:
  lower = name.lower()
  for label, fragments in CATEGORIES:
    if any(f in lower for f in fragments):
      return label
  return "other"


def trace(run_step, steps: int, logdir: str):
  """Profiles `steps` calls of `run_step()` (which must block until its result is ready)."""
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    for _ in range(steps):
      run_step()


def _events(logdir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"{logdir}: no perfetto_trace.json.gz (did the trace run?)")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def summarize(logdir: str, steps: int, top: int = 25) -> dict:
  """Device time per step (summed over devices and streams), by stream, by category and by op
  (the costliest `top`)."""
  events = _events(logdir)
  process = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
  devices = {pid for pid, name in process.items() if name.startswith("/device:")}
  # Accelerator: device lines other than per-stream kernels ("XLA Modules", "XLA Ops", "Steps")
  # overlap the kernels they aggregate, so only stream lines count. CPU (no device process): the
  # thunks that name their HLO op, on whichever host thread ran them.
  per_stream, per_op, per_category = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    line = thread.get((e["pid"], e.get("tid")), "")
    hlo_op = (e.get("args") or {}).get("hlo_op")
    if devices and (e["pid"] not in devices or not line.lower().startswith("stream")):
      continue
    if not devices and not hlo_op:
      continue
    us = float(e.get("dur", 0.0))
    op = hlo_op or e["name"]
    per_stream[line] += us
    per_op[(op, e["name"])] += us
    per_category[category(f"{e['name']} {op}")] += us
  total = sum(per_category.values())
  ms = lambda us: round(us / 1e3 / max(steps, 1), 3)
  return {
      "steps": steps, "device_ms_per_step": ms(total),
      "streams_ms_per_step": {k: ms(v) for k, v in per_stream.most_common()},
      "category_ms_per_step": {k: ms(v) for k, v in per_category.most_common()},
      "category_fraction": {k: round(v / total, 4) for k, v in per_category.most_common()} if total else {},
      "top_ops": [{"op": op, "kernel": kernel[:160], "ms_per_step": ms(us),
                   "fraction": round(us / total, 4) if total else None}
                  for (op, kernel), us in per_op.most_common(top)],
  }


def profile_step(run_step, steps: int, workdir: str) -> dict:
  """Traces `steps` steps into <workdir>/profile and writes <workdir>/profile_ops.json."""
  logdir = os.path.join(workdir, "profile")
  trace(run_step, steps, logdir)
  summary = summarize(logdir, steps)
  summary["trace_dir"] = logdir
  with open(os.path.join(workdir, "profile_ops.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
