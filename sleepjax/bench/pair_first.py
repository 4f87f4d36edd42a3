"""Pair-first vs all-modality training compute of a family's loss + gradient, at M modalities.

  python -m sleepjax.bench.pair_first --config=configs/sleep2vec.py:size=5m --workdir=runs/bench \
      [--batch=8] [--window=16] [--repeats=5]

Compiles `jax.value_and_grad(family.loss)` for (a) a batch carrying all M modalities with
`pair_strategy=all_pairs` (every modality encoded) and (b) pair-first batches carrying two
modalities (the costliest pair, the cheapest pair), and (c) a pair-first batch that still carries
all M modalities (the pair picked at run time). Reports XLA's compiled FLOPs (cost_analysis), the
family's analytic FLOPs and the measured step time on the default backend; writes
`<workdir>/bench/pair_first.json`. Inputs: sleep2vec's nine (four single-channel 3840-sample
modalities, five 120-sample ones).
"""

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NINE = {"eeg": (128, 1), "eog": (128, 1), "emg": (128, 1), "ecg": (128, 1), "heart_rate": (4, 1),
        "spo2": (4, 1), "airflow": (4, 1), "nasal_pressure": (4, 1), "resp_effort": (4, 1)}


def _batch(names, B, W, seed=0):
  rng = np.random.default_rng(seed)
  return {"signals": {m: jnp.asarray(rng.normal(size=(B, W, c, r * 30)), jnp.float32)
                      for m, (r, c) in NINE.items() if m in names},
          "masks": {m: jnp.ones((B, W, c), bool) for m, (r, c) in NINE.items() if m in names},
          "age": jnp.asarray(rng.uniform(20, 80, B), jnp.float32),
          "sex": jnp.asarray(rng.integers(0, 2, B), jnp.int32),
          "site": jnp.asarray(rng.integers(0, 3, B), jnp.int32), "recording": jnp.arange(B)}


def measure(config, names, B, W, repeats):
  from sleepjax.families import get_family  # pylint: disable=g-import-not-at-top
  from sleepjax.train.state import build_model  # pylint: disable=g-import-not-at-top
  family = get_family(config)
  graphdef, params = nnx.split(build_model(config, NINE, 0))
  grad = jax.value_and_grad(lambda p, b, r: family.loss(nnx.merge(graphdef, p), b, r), has_aux=True)
  batch, key = _batch(names, B, W), jax.random.key(0)
  compiled = jax.jit(grad).lower(params, batch, key).compile()
  cost = compiled.cost_analysis()
  xla = float((cost[0] if isinstance(cost, list) else cost)["flops"])
  jax.block_until_ready(compiled(params, batch, key))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, batch, key))
    times.append(time.perf_counter() - t0)
  encoded = tuple(names) if len(names) == 2 or config.objective.pair_strategy != "pair_first" else None
  analytic = family.flops(config, NINE, B, W, encoded=encoded)
  return {"modalities_in_batch": list(names), "pair_strategy": config.objective.pair_strategy,
          "xla_flops": xla, "analytic_flops": analytic, "step_s_median": float(np.median(times)),
          "step_s_min": float(np.min(times))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/sleep2vec.py:size=5m")
  parser.add_argument("--workdir", default="runs/bench")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--window", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(args.config)
  config.model.dtype = "float32"  # the CPU measures float32
  rows = {}
  config.objective.pair_strategy = "all_pairs"
  rows["all_modalities"] = measure(config, list(NINE), args.batch, args.window, args.repeats)
  config.objective.pair_strategy = "pair_first"
  rows["pair_first_eeg_ecg"] = measure(config, ["eeg", "ecg"], args.batch, args.window, args.repeats)
  rows["pair_first_spo2_airflow"] = measure(config, ["spo2", "airflow"], args.batch, args.window,
                                            args.repeats)
  rows["pair_first_runtime_pick_9_keys"] = measure(config, list(NINE), args.batch, args.window,
                                                   args.repeats)
  base = rows["all_modalities"]
  for row in rows.values():
    row["xla_flops_vs_all"] = row["xla_flops"] / base["xla_flops"]
    row["step_time_vs_all"] = row["step_s_median"] / base["step_s_median"]
    row["analytic_vs_xla"] = row["analytic_flops"] / row["xla_flops"]
  result = {"config": args.config, "batch": args.batch, "window": args.window,
            "model": {k: config.model[k] for k in ("width", "depth", "heads", "mlp")},
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "rows": rows}
  out = os.path.join(args.workdir, "bench")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "pair_first.json"), "w") as f:
    json.dump(result, f, indent=1)
  for name, row in rows.items():
    print(f"{name:<32} xla {row['xla_flops']:.3e} ({row['xla_flops_vs_all']:.2f}x)  analytic "
          f"{row['analytic_flops']:.3e} ({row['analytic_vs_xla']:.2f} of xla)  step "
          f"{1e3 * row['step_s_median']:.1f} ms ({row['step_time_vs_all']:.2f}x)")


if __name__ == "__main__":
  main()
