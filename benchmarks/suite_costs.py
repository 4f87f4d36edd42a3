"""What the test suite's compile flags, checkpoint saves and abstract states cost, one fresh process
per row (BENCHMARKS.md, "The test suite"):

  python benchmarks/suite_costs.py <dir> step     # tiny train step: trace/lower/compile CPU-s
                                                        # under each XLA flag set the tests tried
  python benchmarks/suite_costs.py <dir> save     # tiny state saves, Orbax replica-parallel
                                                        # on (its CPU default) vs one writer
  python benchmarks/suite_costs.py <dir> abstract # abstract_state of each preset: CPU-s

<dir> gets the tests' tiny cohort (synthesised and prepared once). Rows print as JSON lines.
"""
import json
import os
import pathlib
import resource
import subprocess
import sys

FLAGS = {
    "default": "",
    "O0": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    "O0 + legacy emitters": ("--xla_backend_optimization_level=0 "
                             "--xla_llvm_disable_expensive_passes=true "
                             "--xla_cpu_use_fusion_emitters=false"),
    "O0 + legacy emitters + 1 codegen thread (the tests')": (
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
        "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"),
}
PRESETS = ("configs/smoke.py:tiny", "configs/sleeplm.py:tiny", "configs/smoke.py",
           "configs/sleeplm.py", "configs/sleeplm.py:base")


def cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _setup(directory: pathlib.Path, preset: str):
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  config = load_config(preset)
  mesh, manifest, modalities, tx, schedule = trainer.setup(config, str(directory))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.modalities = tuple(modalities)
  return config, mesh, manifest, modalities, tx, schedule


def step(directory: pathlib.Path, preset: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from sleepjax import sharding  # pylint: disable=g-import-not-at-top
  from sleepjax.train import state as state_lib, trainer  # pylint: disable=g-import-not-at-top
  from sleepjax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  config, mesh, manifest, modalities, tx, schedule = _setup(directory, preset)
  graphdef, abstract, shardings = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  batches = trainer.batches(config, manifest, modalities, mesh)
  batch = next(batches)
  fn = jax.jit(make_train_step(graphdef, tx, schedule, config),
               in_shardings=(shardings, sharding.batch_sharding(mesh)),
               out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  with jax.set_mesh(mesh):
    c0 = cpu()
    traced = fn.trace(abstract, batch)
    c1 = cpu()
    lowered = traced.lower()
    c2 = cpu()
    lowered.compile()
    c3 = cpu()
  batches.close()
  return {"trace": round(c1 - c0, 2), "lower": round(c2 - c1, 2), "compile": round(c3 - c2, 2)}


def save(directory: pathlib.Path, preset: str, replica_parallel: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from sleepjax.train import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  from sleepjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config, mesh, manifest, modalities, tx, _ = _setup(directory, preset)
  _, _, shardings = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  state = state_lib.init_state(config, modalities, tx, shardings, 0)
  batches = trainer.batches(config, manifest, modalities, mesh)
  next(batches)
  out = directory / f"save-{replica_parallel}"
  manager = checkpoint.make_manager(str(out), config)
  if replica_parallel:  # Orbax's own default handler back (make_manager set the single writer)
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=True, array_metadata_store=checkpoint.array_metadata_store.Store()),
                                            override=True)
  rows = []
  for i in range(1, 5):
    c0 = cpu()
    checkpoint.save(manager, i, state, batches, config, force=True)
    manager.wait_until_finished()
    rows.append(round(cpu() - c0, 2))
  manager.close()
  batches.close()
  return {"leaves": len(jax.tree.leaves(state)), "cpu_per_save": rows}


def abstract(directory: pathlib.Path, preset: str) -> dict:
  from sleepjax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config, mesh, _, modalities, tx, _ = _setup(directory, preset)
  c0 = cpu()
  state_lib.abstract_state(config, modalities, tx, mesh, 0)
  return {"cpu": round(cpu() - c0, 2)}


def _prepare(directory: pathlib.Path):
  if (directory / "data" / "manifest.json").exists():
    return
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("configs/smoke.py:tiny")
  synthetic.write_cohort(directory / "raw", **config.synthetic)
  prep.prepare(directory / "raw", directory / "data", config.prep)
  prep.train_caption_tokenizer(directory / "data", config.text.vocab_size)


def _child(what: str, directory: str, *args: str) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
  env["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=8", args[0]])
  out = subprocess.run([sys.executable, __file__, "--child", what, directory, *args[1:]], env=env,
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(directory: str, what: str):
  path = pathlib.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  _prepare(path)
  tests = FLAGS["O0 + legacy emitters + 1 codegen thread (the tests')"]
  if what == "step":
    rows = [{"preset": p, "flags": name, **_child("step", directory, flags, p)}
            for p in PRESETS[:2] for name, flags in FLAGS.items()]
  elif what == "save":
    rows = [{"preset": p, "replica_parallel": rp, **_child("save", directory, tests, p, str(rp))}
            for p in PRESETS[:2] for rp in (True, False)]
  else:
    rows = [{"preset": p, **_child("abstract", directory, tests, p)} for p in PRESETS]
  for row in rows:
    print(json.dumps(row))


if __name__ == "__main__":
  if sys.argv[1] == "--child":
    what, directory, preset, *rest = sys.argv[2:]
    fn = {"step": step, "save": lambda d, p: save(d, p, rest[0] == "True"), "abstract": abstract}
    print(json.dumps(fn[what](pathlib.Path(directory), preset)))
  else:
    main(*sys.argv[1:])
