"""`sleepjax bench step`: the jitted train step alone, on synthetic in-memory batches.

  sleepjax bench step --config=configs/sleep2vec.py:dense --config.data.global_batch=128 \
      --workdir=runs/bench [--aot_devices=64]

Builds the model and optimizer from the config, shards them on the config's mesh over whatever
devices exist, compiles the step for a batch of the right shapes (random signals, every channel
present; pair-first batches carry two modalities) and times it. Writes <workdir>/bench/step.json:
params, flops_per_step (the family's analytic count), xla_flops_per_step (XLA's cost analysis,
which misses custom calls such as cuBLAS/cuDNN on GPU), compile_seconds, step_seconds (median),
mfu (null where the device's peak is unknown), bytes_per_device (compiled memory analysis),
device_kind, global_batch. step_seconds is the median time between completions of steps queued
back to back, as the trainer runs them; step_seconds_blocking_median times each step alone
(dispatch included, nothing overlapped).
`--profile_steps=N` then traces N steps (see `sleepjax.profile`).

`--aot_devices=N` with N above the devices present compiles (without running) for a mesh of N
simulated CPU devices in a subprocess and prints the per-device memory, so a configuration that
cannot fit is found before launch. The CPU compiler's buffer assignment is an estimate of an
accelerator's (same parameter, optimizer and activation shapes per device; fusion differs).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

AOT_DEVICES = flags.DEFINE_integer(
    "aot_devices", 0, "bench step: compile only, for a mesh of this many (simulated CPU) devices, "
    "and print per-device memory.")
BENCH_STEPS = flags.DEFINE_integer("bench_steps", 10, "bench step: timed steps (after 2 warm-up).")
PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 0, "bench step: after timing, trace this many steps with jax.profiler into "
    "<workdir>/bench/profile and summarise device time per op in <workdir>/bench/profile_ops.json.")

CAPTION_GROUPS = 5  # data_prep.captions.GROUPS


def modality_shapes(config) -> dict[str, tuple[int, int]]:
  """name -> (rate, channels) of the config's modalities, from the canonical table."""
  from sleepjax.modalities import CANONICAL  # pylint: disable=g-import-not-at-top
  names = tuple(config.data.modalities) or tuple(config.prep.modalities)
  return {m: (CANONICAL[m].rate, len(CANONICAL[m].channels)) for m in names}


def synthetic_batch(config, modalities: dict, local_batch: int, seed: int = 0) -> dict:
  """A flat numpy batch as the input pipeline yields it (see `sleepjax.data.pipeline`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sleepjax.modalities import EPOCH_SECONDS  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  B, W = local_batch, config.data.window_epochs
  names = list(modalities)
  if config.data.modality_sampling == "pair_first":
    names = names[:2]
  out = {}
  for m in names:
    rate, channels = modalities[m]
    out[f"signals/{m}"] = rng.standard_normal((B, W, channels, rate * EPOCH_SECONDS), np.float32
                                              ).astype(np.float16)
    out[f"masks/{m}"] = np.ones((B, W, channels), bool)
  out["stage"] = rng.integers(0, 5, (B, W)).astype(np.int32)
  out["events"] = np.zeros((B, W, EPOCH_SECONDS), np.uint8)
  out["epoch_index"] = np.broadcast_to(np.arange(W, dtype=np.int32), (B, W)).copy()
  out["age"] = rng.uniform(20, 80, B).astype(np.float32)
  out["sex"] = rng.integers(0, 2, B).astype(np.int32)
  out["site"] = rng.integers(0, 2, B).astype(np.int32)
  out["recording"] = np.arange(B, dtype=np.int32)
  if config.data.caption_len:
    shape = (B, W, CAPTION_GROUPS, config.data.caption_len)
    out["captions"] = rng.integers(1, config.text.vocab_size, shape).astype(np.int32)
    out["caption_mask"] = np.ones(shape, bool)
  return out


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return {}
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out["bytes_per_device"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                             + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _flops(config, modalities: dict, local: dict) -> float | None:
  """The family's analytic FLOPs for exactly the modalities this batch carries."""
  from sleepjax.families import get_family  # pylint: disable=g-import-not-at-top
  encoded = tuple(k.split("/", 1)[1] for k in local if k.startswith("signals/"))
  flops = get_family(config).flops
  try:
    return float(flops(config, modalities, config.data.global_batch, config.data.window_epochs,
                       encoded=encoded))
  except TypeError:  # a family without the `encoded` argument
    return float(flops(config, modalities, config.data.global_batch, config.data.window_epochs))


def compile_step(config, *, run: bool, devices=None):
  """(result dict, compiled step, state, batch): compiled for the config's mesh on `devices`
  (default: every device present; compile-only devices of a topology for `run=False`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sleepjax import sharding  # pylint: disable=g-import-not-at-top
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sleepjax.train import metrics, optim, state as state_lib, trainer  # pylint: disable=g-import-not-at-top
  from sleepjax.train.step import make_train_step  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh, devices)
  modalities = modality_shapes(config)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  graphdef, abstract, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, config.seed)
  local_batch = trainer.check_batch(config.data.global_batch, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  local = synthetic_batch(config, modalities, local_batch, seed=jax.process_index())
  step = jax.jit(make_train_step(graphdef, tx, schedule, config),
                 in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  abstract_batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(), *x.shape[1:]), x.dtype,
                                     sharding=batch_sh), pipeline.nest(local))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(abstract, abstract_batch).compile()
  compile_seconds = time.perf_counter() - t0
  device = mesh.devices.flat[0]
  result = {
      "what": "step", "params": int(sum(x.size for x in jax.tree.leaves(abstract.params))),
      "flops_per_step": _flops(config, modalities, local),
      "xla_flops_per_step": _xla_flops(compiled), "compile_seconds": compile_seconds,
      "device_kind": device.device_kind, "platform": device.platform,
      "devices": mesh.devices.size, "mesh": dict(mesh.shape),
      "global_batch": config.data.global_batch, "window": config.data.window_epochs,
      "modalities_per_batch": sum(k.startswith("signals/") for k in local),
      "model": {k: v for k, v in config.model.to_dict().items()},
      "peak_flops_per_device": metrics.peak_flops(device.device_kind), **_memory(compiled)}
  if not run:
    return result, None, None, None
  state = state_lib.init_state(config, modalities, tx, state_sh, config.seed)
  batch = pipeline.to_global(local, batch_sh)
  return result, compiled, state, batch


def bench_step(config, workdir: str) -> dict:
  n_aot = AOT_DEVICES.value
  import jax  # pylint: disable=g-import-not-at-top
  if n_aot and n_aot != jax.device_count():
    return _aot_subprocess(config, workdir, n_aot)
  from sleepjax.train import metrics  # pylint: disable=g-import-not-at-top
  result, compiled, state, batch = compile_step(config, run=not n_aot)
  if compiled is not None:
    times = []  # each step alone: dispatch + run, the host blocked in between
    for i in range(2 + BENCH_STEPS.value):
      t0 = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready((state, m))
      if i >= 2:
        times.append(time.perf_counter() - t0)
    # As the trainer runs: step i+1 is queued before waiting for step i, so the host's dispatch
    # overlaps the device's work. The gaps between completions are the throughput step time.
    done, previous = [], None
    for _ in range(max(BENCH_STEPS.value, 2) + 1):
      state, m = compiled(state, batch)
      if previous is not None:
        jax.block_until_ready(previous)
        done.append(time.perf_counter())
      previous = m
    jax.block_until_ready((state, m))
    step_s = statistics.median(b - a for a, b in zip(done, done[1:]))
    B, W = config.data.global_batch, config.data.window_epochs
    result.update({
        "step_seconds": step_s, "step_seconds_blocking_median": statistics.median(times),
        "step_seconds_blocking": times, "loss": float(m["loss"]),
        "mfu": metrics.mfu(result["flops_per_step"], step_s),
        "sleep_epochs_per_s": B * W / step_s,
        "tokens_per_s": B * W * result["modalities_per_batch"] / step_s})
    if PROFILE_STEPS.value:
      result["profile"] = _profile(compiled, state, batch, workdir)
  _print(result)
  return result


def _profile(compiled, state, batch, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from sleepjax import profile  # pylint: disable=g-import-not-at-top
  box = [state]

  def run_step():
    box[0], m = compiled(box[0], batch)
    jax.block_until_ready((box[0], m))

  out = os.path.join(workdir, "bench")
  os.makedirs(out, exist_ok=True)
  summary = profile.profile_step(run_step, PROFILE_STEPS.value, out)
  print(f"bench step: profile: {summary['device_ms_per_step']:.1f} ms device time per step; "
        f"by category {summary['category_ms_per_step']} (ms); {out}/profile_ops.json")
  return {k: summary[k] for k in ("device_ms_per_step", "category_ms_per_step", "category_fraction")}


def _print(r: dict):
  gib = r.get("bytes_per_device", 0) / 2**30
  line = (f"bench step: {r['params'] / 1e6:.1f}M params, batch {r['global_batch']}x{r['window']} on "
          f"{r['devices']} x {r['device_kind']} mesh {r['mesh']}: compile {r['compile_seconds']:.1f} s, "
          f"{gib:.2f} GiB/device")
  if "step_seconds" in r:
    line += f", step {r['step_seconds'] * 1e3:.1f} ms, {r['sleep_epochs_per_s']:.0f} epochs/s"
    if r.get("mfu") is not None:
      line += f", MFU {r['mfu']:.1%}"
  if r.get("flops_per_step"):
    line += f", {r['flops_per_step'] / 1e12:.3f} TFLOP/step (analytic)"
  print(line)


def _aot_subprocess(config, workdir: str, n: int) -> dict:
  """Compiles for `n` simulated CPU devices in a fresh process (the device count is fixed at JAX
  start-up); returns its result."""
  with tempfile.TemporaryDirectory() as tmp:
    cfg, out = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
    with open(cfg, "w") as f:
      f.write(config.to_json())
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    code = ("import json, sys, ml_collections; from sleepjax.bench import step as bench_step; "
            "c = ml_collections.ConfigDict(json.load(open(sys.argv[1]))); "
            "r = bench_step.compile_step(c, run=False)[0]; json.dump(r, open(sys.argv[2], 'w'))")
    subprocess.run([sys.executable, "-c", code, cfg, out], env=env, check=True)
    with open(out) as f:
      result = json.load(f)
  result["aot"] = True
  _print(result)
  return result
