"""Train-step timing of a SleepLM preset on synthetic batches (no data on disk needed).

    python -m sleepjax.bench.sleeplm --config=configs/sleeplm.py:base --batch=2 --window=1

Prints one JSON line: parameters, epochs per step, compile and step time (median of --steps),
analytic TFLOP/s (`families.sleeplm.flops`), MFU against --peak_tflops, device memory.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

CANONICAL_SHAPES = {"eeg": (128, 2), "eog": (128, 2), "emg": (128, 1), "ecg": (128, 1),
                    "spo2": (4, 1), "airflow": (32, 1), "resp_effort": (32, 2)}


def synthetic_batch(config, batch: int, window: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  L = config.data.caption_len
  out = {"signals": {}, "masks": {}}
  for m, (rate, ch) in CANONICAL_SHAPES.items():
    out["signals"][m] = rng.normal(size=(batch, window, ch, rate * 30)).astype(np.float32)
    out["masks"][m] = np.ones((batch, window, ch), bool)
  caps = rng.integers(4, min(config.text.vocab_size, 500), size=(batch, window, 5, L))
  caps[..., 0], caps[..., -1] = 2, 3
  out["captions"], out["caption_mask"] = caps.astype(np.int32), np.ones(caps.shape, bool)
  return out


def run(config, batch: int, window: int, steps: int, peak_tflops: float) -> dict:
  from sleepjax.families import sleeplm as family  # pylint: disable=g-import-not-at-top
  with nnx.use_eager_sharding(False):
    graphdef, params = nnx.split(family.build(config, {}, nnx.Rngs(0)))
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)
  data = jax.device_put(synthetic_batch(config, batch, window))

  @jax.jit
  def step(params, opt_state, batch, key):
    f = lambda p: family.loss(nnx.merge(graphdef, p), batch, key)
    (loss, _), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, data, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t0
  params, opt_state, loss = compiled(params, opt_state, data, jax.random.key(0))
  loss.block_until_ready()
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, data, jax.random.key(i + 1))
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  flops = family.flops(config, {}, batch, window)
  stats = jax.devices()[0].memory_stats() or {}
  return {"device": jax.devices()[0].device_kind, "size": config.model.size,
          "dtype": config.model.dtype, "params_M": sum(x.size for x in jax.tree.leaves(params)) / 1e6,
          "sleep_epochs_per_step": batch * window, "caption_len": config.data.caption_len,
          "compile_s": round(compile_s, 1), "step_s": round(step_s, 4),
          "sleep_epochs_per_s": round(batch * window / step_s, 1),
          "tflops_per_s": round(flops / step_s / 1e12, 2),
          "mfu": round(flops / step_s / 1e12 / peak_tflops, 3) if peak_tflops else None,
          "peak_memory_GiB": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
          "loss": float(loss)}


def main():
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/sleeplm.py:base")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--window", type=int, default=1)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--dtype", default="")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="per-chip peak for MFU (H100/H200 bf16 dense: 989)")
  a = p.parse_args()
  config = load_config(a.config)
  if a.dtype:
    config.model.dtype = a.dtype
  print(json.dumps(run(config, a.batch, a.window, a.steps, a.peak_tflops)))


if __name__ == "__main__":
  main()
