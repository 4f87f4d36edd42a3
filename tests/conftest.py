"""Tests run JAX on CPU with 8 simulated devices; set before anything imports JAX."""

import atexit
import os
import shutil
import tempfile

# XLA's CPU back end at its lowest optimisation level compiles the tests' tiny programs about
# twice as fast and runs them no slower that matters; compiling, not running, is most of the
# suite's time. Its older fusion emitters (LLVM IR, not the MLIR ones) halve the compile again
# (tiny train step 11.7 -> 5.9 CPU-s) and one codegen thread per program suits two busy workers
# (-> 5.0; BENCHMARKS.md "The test suite"). Subprocesses inherit the flags (launch/local.py keeps
# them, resetting the count).
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(("--xla_force_host_platform_device_count=8",) + FAST_COMPILE)
os.environ["JAX_PLATFORMS"] = "cpu"
# One scratch directory per test run, shared by every pytest-xdist worker (the controller makes it
# before the workers start; they inherit the variable) and every subprocess a test starts. It holds
# XLA's persistent compilation cache (most tests compile the same tiny programs, and compiling
# dominates the suite on a 2-core machine) and the session fixtures built once per run below. Fresh
# per run, so CI and a local run measure the same thing and nothing stale outlives a code change.
if "SLEEPJAX_TEST_RUN_DIR" not in os.environ:  # `tests.conftest` imports this module a second time
  os.environ["SLEEPJAX_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="sleepjax-tests-")
  atexit.register(shutil.rmtree, os.environ["SLEEPJAX_TEST_RUN_DIR"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.environ["SLEEPJAX_TEST_RUN_DIR"], "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import fcntl  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


# The longest test files (BENCHMARKS.md "The test suite"), handed to the pytest-xdist workers first
# (`make test` passes --no-loadscope-reorder, which keeps this order; xdist's own puts files with
# the most tests first): a long file that starts last keeps one worker busy while the other idles.
# The first two need no shared fixture (test_adapt.py builds its own cohort), so neither worker
# starts by waiting on the shared cohort's lock. The other files keep their collection order.
LONGEST_FIRST = ("test_adapt.py", "test_sleeplm.py", "test_evaluate_sleeplm.py", "test_trainer.py",
                 "test_evaluate_run.py", "test_families.py", "test_end_to_end.py", "test_sweep.py",
                 "test_models.py", "test_sharding.py", "test_gradcache.py",
                 "test_sleeplm_generate.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def tiny_config():
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  return load_config(f"{REPO / 'configs' / 'smoke.py'}:tiny")


def _built_once(name, build):
  """`build(directory)` once per test run, by whichever xdist worker asks first (the others wait
  on a lock and read the result): the cohort and the trained presets cost more than the tests
  that read them. Returns (directory, what build returned, as JSON)."""
  run_dir = pathlib.Path(os.environ["SLEEPJAX_TEST_RUN_DIR"])
  directory, result = run_dir / name, run_dir / f"{name}.json"
  with open(run_dir / f"{name}.lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not result.exists():
      shutil.rmtree(directory, ignore_errors=True)  # a worker that failed building it
      directory.mkdir()
      result.write_text(json.dumps(build(directory), default=float))
  return directory, json.loads(result.read_text())


@pytest.fixture(scope="session")
def prepared(tiny_config):
  """A tiny synthetic cohort converted to shards: returns the workdir (raw/ and data/ inside)."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top

  def build(workdir):
    synthetic.write_cohort(workdir / "raw", **tiny_config.synthetic)
    prep.prepare(workdir / "raw", workdir / "data", tiny_config.prep)
    prep.train_caption_tokenizer(workdir / "data", tiny_config.text.vocab_size)

  return _built_once("prepared", build)[0]


@pytest.fixture(scope="session")
def sleep2vec_trained(prepared, tiny_config):
  """configs/smoke.py:tiny trained once on the shared cohort (6 steps, checkpoints at 3 and 6):
  (workdir, the last step's metrics). Read it only; copy train/ to write beside it."""
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top

  def build(workdir):
    (workdir / "data").symlink_to(prepared / "data")
    return trainer.train(tiny_config.copy_and_resolve_references(), str(workdir))

  return _built_once("sleep2vec", build)


@pytest.fixture(scope="session")
def sleeplm_trained(prepared):
  """configs/sleeplm.py:tiny trained once on the shared cohort (checkpoints at steps 3 and 6), for
  the tests that restore, caption or evaluate it: (workdir, the last step's metrics). Read it
  only; a test that writes beside it copies train/ into a workdir of its own."""
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top

  def build(workdir):
    (workdir / "data").symlink_to(prepared / "data")
    return trainer.train(load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny"), str(workdir))

  return _built_once("sleeplm", build)
