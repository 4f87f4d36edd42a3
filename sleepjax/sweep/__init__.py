"""Scaling sweeps: a sweep file -> one workdir per run with its resolved config -> runs -> results.

A sweep file (`configs/sweeps/*.py`) is a config file with two functions:

  get_config(arg)  the base config, with a `sweep` section (the axes: sizes, modality counts,
                   data fractions, seeds, budgets) and a `launch` section (`launch_config()`:
                   local / SLURM / xpk settings); any field is overridable with --config.<key>.
  sweep(config)    yields one override dict per run: {"model.width": 256, "seed": 1, ...}.
                   Two keys are not config fields: "name" (the run's directory name; default: built
                   from the overrides) and "budget_flops" (train.steps = budget / the family's
                   analytic FLOPs per step, so every run spends the same compute).

`expand` applies each dict to the base config and writes `<workdir>/runs/<name>/config.json` (the
resolved config without the sweep and launch sections) and a `config.py` that loads it, so a run is
`sleepjax sweep-run --config=<run>/config.py --workdir=<run>` anywhere, by any runner (the cluster
scripts pass `--config=<run>/config.json`, which also reads a run on cloud storage: the workdir may
be a `gs://` URI, read and written through etils.epath). A run's
config is fixed once written: expanding again with different settings for an existing run is
refused with the differences listed. `sweep-run` trains (resuming from the run's checkpoints),
measures the validation loss and writes `<run>/result.json`; a run with a result is finished and
skipped, a run without one is (re)started and resumes where it stopped. One job at a time trains
a run (`lease`).
"""

import hashlib
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import time

import ml_collections

from sleepjax import config_tools
from sleepjax.config_tools import storage_path
from sleepjax.sweep.layout import RESULT, RUNS, status  # pylint: disable=unused-import  (API)
from sleepjax.sweep.sections import launch_config, sweep_section  # pylint: disable=unused-import

REPO_ENV = "SLEEPJAX_REPO"  # the checkout the cluster scripts `cd` into / build the image from
SWEEP_ONLY = ("sweep", "launch")  # config sections that describe the sweep, not a run
SPECIAL = ("name", "budget_flops")

RUN_CONFIG_PY = '''"""Resolved config of sweep run {name} (written by `sleepjax sweep`): config.json beside it."""

import pathlib

from sleepjax.sweep import read_run_config


def get_config():
  return read_run_config(pathlib.Path(__file__).with_name("config.json"))
'''


def repo_dir(package_parent: pathlib.Path = pathlib.Path(__file__).resolve().parents[2],
             env=None) -> pathlib.Path:
  """The sleepjax checkout the cluster scripts run from: $SLEEPJAX_REPO, else the checkout this
  package was imported from; an installed wheel (site-packages) has none, and is refused."""
  env = os.environ if env is None else env
  if env.get(REPO_ENV):
    repo = pathlib.Path(env[REPO_ENV]).expanduser().resolve()
    if not (repo / "pyproject.toml").is_file():
      raise ValueError(f"{REPO_ENV}={env[REPO_ENV]}: not a sleepjax checkout (no pyproject.toml)")
    return repo
  if (package_parent / "pyproject.toml").is_file() and (package_parent / "launch").is_dir():
    return package_parent
  raise ValueError(
      f"sleepjax is installed as a package ({package_parent}), not run from a checkout: the "
      f"cluster scripts need the repository on the cluster; set {REPO_ENV}=<path of the checkout "
      "there> (or use --runner=local)")


def load_module(path: str | os.PathLike):
  """Imports a config / sweep file by path (it may import its neighbours through __file__)."""
  path = os.fspath(path).partition(":")[0]
  spec = importlib.util.spec_from_file_location(f"sleepjax_sweep_{abs(hash(path))}", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such sweep file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def family_sizes(family: str = "sleep2vec") -> dict:
  """The family's size table, `configs/<family>.py: SIZES` ({name: {model key: value}})."""
  return load_module(config_tools.CONFIGS / f"{family}.py").SIZES


def modality_subsets(modalities, count: int, n: int, seed: int = 0) -> list[tuple[str, ...]]:
  """`n` distinct subsets of `count` modalities, deterministic in `seed` (all if there are fewer).

  Subsets keep the modalities' given order, so the same subset always has the same name.
  """
  modalities = tuple(modalities)
  combos = list(itertools.combinations(modalities, count))
  if len(combos) <= n:
    return combos
  order = sorted(range(len(combos)), key=lambda i: hashlib.sha256(
      f"{seed}:{'+'.join(combos[i])}".encode()).hexdigest())
  return [combos[i] for i in sorted(order[:n])]


def grid(config, sizes: dict):
  """Yields the override dicts of the full grid over `config.sweep` (see `sweep_section`).

  sizes: {name: {key: value}} (a family's size table); keys without a dot are `model.` keys.
  modalities: the pool subsets are drawn from (default: data.modalities, else prep.modalities);
  the subsets of each count are deterministic. budgets_flops: FLOP budgets per run (empty:
  config.train.steps).
  """
  s = config.sweep
  pool = tuple(s.modalities or config.data.modalities or config.prep.modalities)
  for size in s.sizes or ("base",):
    if s.sizes and size not in sizes:
      raise KeyError(f"sweep size {size!r} is not in the size table ({', '.join(sizes)})")
    for count in s.modality_counts or (len(pool),):
      if not 1 <= count <= len(pool):
        raise ValueError(f"modality count {count}: the pool has {len(pool)} ({', '.join(pool)})")
      for subset in modality_subsets(pool, count, s.subsets_per_count):
        mods = "all" if len(subset) == len(pool) else "+".join(subset)
        for fraction in map(float, s.subject_fractions):
          for budget in map(float, s.budgets_flops or (0,)):  # "1e17" from the command line
            for seed in s.seeds:
              name = f"{size}-m{count}-{mods}-f{fraction:g}"
              if budget:
                name += "-" + f"{budget:.0e}".replace("e+", "e")
              overrides = {"name": f"{name}-s{seed}"}
              if s.sizes:
                overrides.update({k if "." in k else f"model.{k}": v
                                  for k, v in sizes[size].items()})
              overrides.update({"data.modalities": subset, "data.subject_fraction": fraction,
                                "seed": seed})
              if budget:
                overrides["budget_flops"] = budget
              yield overrides


def _plain(value):
  """ConfigDict values -> JSON-able (tuples as lists, ConfigDicts as dicts)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def read_run_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  saved = json.loads(storage_path(path).read_text())
  return ml_collections.ConfigDict(config_tools.json_tuples(saved))


def run_name(overrides: dict) -> str:
  """A readable, filesystem-safe name from the overrides (hash-suffixed when long)."""
  if "name" in overrides:
    return str(overrides["name"])
  parts = []
  for key, value in overrides.items():
    if isinstance(value, (list, tuple)):
      value = "+".join(map(str, value))
    parts.append(f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float)
                 else f"{key.rsplit('.', 1)[-1]}={value}")
  name = re.sub(r"[^A-Za-z0-9=+.-]+", "_", ",".join(parts)).strip("_") or "run"
  if len(name) > 80:
    digest = hashlib.sha256(json.dumps(_plain(overrides), sort_keys=True).encode()).hexdigest()
    name = f"{name[:71]}-{digest[:8]}"
  return name


def set_key(config: ml_collections.ConfigDict, key: str, value):
  """config.<dotted key> = value; a key the config lacks is an error naming it."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise KeyError(f"sweep override {key!r}: the config has no section {p!r}")
    node = node[p]
  if leaf not in node:
    raise KeyError(f"sweep override {key!r}: no such config field")
  if isinstance(node[leaf], tuple) and isinstance(value, list):
    value = tuple(value)
  node[leaf] = value


def model_modalities(config) -> dict[str, tuple[int, int]]:
  """{modality: (rate, channels)} the run trains on, from the canonical table (no data needed)."""
  from sleepjax.modalities import CANONICAL  # pylint: disable=g-import-not-at-top
  names = config.data.modalities or config.prep.modalities
  return {m: (CANONICAL[m].rate, len(CANONICAL[m].channels)) for m in names}


def flops_per_step(config) -> float:
  """The family's analytic training FLOPs per step (fwd + bwd) for this config."""
  from sleepjax import families  # pylint: disable=g-import-not-at-top
  family = families.FAMILIES[config.model.family]
  return float(family.flops(config, model_modalities(config), config.data.global_batch,
                            config.data.window_epochs))


def resolve(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """The base config with one run's overrides applied (budget_flops -> train.steps)."""
  config = ml_collections.ConfigDict(config_tools.json_tuples(_plain(base)))
  for key in SWEEP_ONLY:
    if key in config:
      del config[key]
  for key, value in overrides.items():
    if key not in SPECIAL:
      set_key(config, key, value)
  if "budget_flops" in overrides:
    config.train.steps = max(1, int(round(float(overrides["budget_flops"]) / flops_per_step(config))))
  return config


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def expand(sweep_file: str, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Writes every run's directory and resolved config; returns [{name, dir, overrides}] in order.

  `config` is the sweep file's get_config() with command-line overrides applied. An empty
  data.dir becomes the sweep's `<workdir>/data`, shared by all runs.
  """
  module = load_module(sweep_file)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{sweep_file}: a sweep file defines sweep(config) yielding override dicts")
  workdir = storage_path(workdir)
  base = ml_collections.ConfigDict(config_tools.json_tuples(_plain(config)))
  if not base.data.dir:
    base.data.dir = os.fspath(workdir / "data")
  runs, seen = [], {}
  for overrides in module.sweep(config):
    overrides = dict(overrides)
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"{sweep_file}: two runs are named {name!r} ({seen[name]} and {overrides})")
    seen[name] = overrides
    resolved = _plain(resolve(base, overrides))
    run_dir = workdir / RUNS / name
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    if path.exists():
      old = json.loads(path.read_text())
      if diffs := _differences(old, resolved):
        raise ValueError(f"run {name} in {workdir} was started with another config ("
                         + "; ".join(diffs[:5]) + "); use another --workdir or delete the run")
    else:
      _write(path, json.dumps(resolved, indent=1, sort_keys=True) + "\n")
    _write(run_dir / "config.py", RUN_CONFIG_PY.format(name=name))
    runs.append({"name": name, "dir": os.fspath(run_dir), "overrides": _plain(overrides),
                 "steps": resolved["train"]["steps"]})
  if not runs:
    raise ValueError(f"{sweep_file}: sweep() yielded no runs")
  _write(workdir / "sweep.json", json.dumps(
      {"sweep_file": os.path.abspath(sweep_file), "runs": runs,
       "launch": _plain(config.get("launch", {})), "sweep": _plain(config.get("sweep", {}))},
      indent=1) + "\n")
  _write(workdir / "runs.txt", "".join(r["dir"] + "\n" for r in runs))
  return runs


def _write(path, text: str):
  """Whole or not at all where the storage renames atomically; cloud objects are written whole."""
  path = storage_path(path)
  if config_tools.is_remote(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# One run: train (resuming), then the validation loss and the run's result.


def val_loss(config, workdir: str, max_batches: int = 16) -> dict:
  """The validation loss of the latest checkpoint's parameters, as training logs it
  (`hooks.ValLoss`: the family's loss in evaluation mode on the first batches of the validation
  split, or of the test split where val is empty: loss_split says which; fixed crops and keys), so
  every run of a sweep is scored on the same windows. Returns val_loss, loss_split, step (of the
  checkpoint), params, ..."""
  import jax  # pylint: disable=g-import-not-at-top

  from sleepjax.train import hooks, restore  # pylint: disable=g-import-not-at-top
  from sleepjax.train.trainer import checkpoint_dir  # pylint: disable=g-import-not-at-top

  r = restore.restore(checkpoint_dir(workdir), config, workdir=workdir)
  records = r.manifest["splits"][hooks.val_split(r.manifest, r.config)]["records"]
  n = min(max_batches, max(1, math.ceil(records / r.config.data.global_batch)))
  val = hooks.ValLoss(r.config, r.manifest, r.modalities, r.mesh, every=0, batches=n)
  with jax.set_mesh(r.mesh):
    loss = val.evaluate(r.params)
  return {"val_loss": loss, "loss_split": val.split, "step": r.step,
          "params": int(sum(x.size for x in jax.tree.leaves(r.params))),
          "train_subjects": _train_subjects(r.manifest, r.config), "modalities": list(r.modalities)}


def latest_step(workdir: str) -> int:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = storage_path(workdir) / "train" / "checkpoints"
  if not path.is_dir():
    return 0
  with ocp.CheckpointManager(path) as manager:
    return manager.latest_step() or 0


def run_member(config, workdir: str) -> dict | None:
  """Trains one sweep member to train.steps (resuming) and writes its result; None if it stopped
  early (train.stop_after_steps) and needs another job to finish."""
  import jax  # pylint: disable=g-import-not-at-top

  from sleepjax.sweep import lease  # pylint: disable=g-import-not-at-top
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top

  result_path = storage_path(workdir) / RESULT
  if result_path.exists():
    print(f"sweep-run: {workdir} is finished ({RESULT}); nothing to do")
    return json.loads(result_path.read_text())
  me = lease.job_identity()
  _take_lease(workdir, me)
  t0 = time.time()
  last = trainer.train(config, workdir)
  step = latest_step(workdir)
  if step < config.train.steps:
    print(f"sweep-run: stopped at step {step} of {config.train.steps}; run again to resume")
    return None
  result = val_loss(config, workdir)
  per_step = flops_per_step(config)
  # tokens: one per modality per 30-s epoch the model saw (sleep2vec's token unit)
  epochs = config.train.steps * config.data.global_batch * config.data.window_epochs
  result.update(
      flops_per_step=per_step, flops=per_step * config.train.steps,
      tokens=epochs * len(result["modalities"]), epochs_seen=epochs,
      modality_count=len(result["modalities"]),
      subject_fraction=float(config.data.subject_fraction), seed=config.seed,
      train_loss=last.get("loss"), wall_s_last_job=time.time() - t0)
  if jax.process_index() == 0:
    _write(result_path, json.dumps(result, indent=1) + "\n")
    lease.release(workdir, me)
  print("sweep-run: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()
                                  if isinstance(v, float)))
  return result


def _take_lease(workdir: str, me: dict):
  """Process 0 takes the run's lease; every process raises if it could not (none trains)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from sleepjax.sweep import lease  # pylint: disable=g-import-not-at-top
  error = None
  if jax.process_index() == 0:
    try:
      lease.acquire(workdir, me)
    except lease.RunLeasedError as e:
      error = e
  ok = error is None
  if jax.process_count() > 1:
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
  if not ok:
    raise error or lease.RunLeasedError(f"{workdir}: process 0 found the run leased by another job")


def _train_subjects(manifest: dict, config) -> int:
  n = len(manifest["splits"]["train"]["subjects"])
  return max(1, math.ceil(n * float(config.data.subject_fraction)))


def launch(sweep_file: str, config, workdir: str, runner: str, log=print, *,
           submit: bool = False) -> list[dict]:
  """`sleepjax sweep`: expand the runs, then run them here or write the cluster scripts (and,
  with `submit`, submit the SLURM array: nothing is submitted unless asked)."""
  if not sweep_file:
    raise ValueError("`sleepjax sweep` needs --config=configs/sweeps/<file>.py")
  from launch import slurm, xpk  # pylint: disable=g-import-not-at-top
  from sleepjax.sweep.local import run_local  # pylint: disable=g-import-not-at-top
  if submit and runner != "slurm":
    raise ValueError(f"--submit submits a SLURM array; --runner={runner} does not submit")
  if runner in ("local", "slurm") and config_tools.is_remote(workdir):
    raise ValueError(f"--runner={runner}: {workdir} is not a filesystem path; its processes read "
                     "the run list and logs through a filesystem (a gcsfuse mount of the bucket)")
  repo = None if runner == "local" else os.fspath(repo_dir())  # refused before writing anything
  runs = expand(sweep_file, config, workdir)
  workdir = os.fspath(storage_path(workdir))
  settings = config.get("launch") or launch_config()
  data = runs and read_run_config(storage_path(runs[0]["dir"]) / "config.json").data.dir
  if not (storage_path(data) / "manifest.json").exists():
    log(f"sweep: note: no prepared data in {data} yet (`sleepjax prep` writes it)")
  done = sum(status(r["dir"]) == "done" for r in runs)
  if runner == "local":
    codes = run_local(runs, settings, log)
    if failed := sorted(n for n, c in codes.items() if c):
      raise ValueError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their log.txt)")
  elif runner == "slurm":
    log(f"sweep: {len(runs)} runs in {workdir}/runs, {done} finished")
    slurm.write_and_submit(workdir, [r["dir"] for r in runs], settings.slurm, repo=repo,
                           stop_after_steps=settings.stop_after_steps, evaluate=settings.eval,
                           submit=submit, log=log)
  elif runner == "xpk":
    log(f"sweep: {len(runs)} runs in {workdir}/runs, {done} finished")
    xpk.write(workdir, [r["dir"] for r in runs], settings.xpk, repo=repo,
              stop_after_steps=settings.stop_after_steps, evaluate=settings.eval, log=log)
  else:
    raise ValueError(f"unknown runner {runner!r} (local, slurm, xpk)")
  return runs
