"""Tests run JAX on CPU with 8 simulated devices; set before anything imports JAX."""

import atexit
import os
import shutil
import tempfile

# XLA's CPU back end at its lowest optimisation level compiles the tests' tiny programs about
# twice as fast and runs them no slower that matters; compiling, not running, is most of the
# suite's time. Subprocesses inherit the flags (launch/local.py keeps them, resetting the count).
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = " ".join(("--xla_force_host_platform_device_count=8",) + FAST_COMPILE)
os.environ["JAX_PLATFORMS"] = "cpu"
# One persistent compilation cache per test session, shared by every test and every subprocess a
# test starts (CLI runs, multi-process training): most tests compile the same tiny programs, and
# XLA's compile dominates the suite on a 2-core machine. Fresh per session, so CI and a local run
# measure the same thing and no stale executable outlives a change to the code.
_CACHE = tempfile.mkdtemp(prefix="sleepjax-xla-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config():
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  return load_config(f"{REPO / 'configs' / 'smoke.py'}:tiny")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tiny_config):
  """A tiny synthetic cohort converted to shards: returns the workdir (raw/ and data/ inside)."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("run")
  synthetic.write_cohort(workdir / "raw", **tiny_config.synthetic)
  prep.prepare(workdir / "raw", workdir / "data", tiny_config.prep)
  prep.train_caption_tokenizer(workdir / "data", tiny_config.text.vocab_size)
  return workdir


@pytest.fixture(scope="session")
def sleep2vec_trained(prepared, tiny_config, tmp_path_factory):
  """configs/smoke.py:tiny trained once on the shared cohort (6 steps, checkpoints at 3 and 6):
  (workdir, the last step's metrics). Read it only; copy train/ to write beside it."""
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("sleep2vec")
  (workdir / "data").symlink_to(prepared / "data")
  return workdir, trainer.train(tiny_config.copy_and_resolve_references(), str(workdir))


@pytest.fixture(scope="session")
def sleeplm_trained(prepared, tmp_path_factory):
  """configs/sleeplm.py:tiny trained once on the shared cohort (checkpoints at steps 3 and 6), for
  the tests that restore, caption or evaluate it: (workdir, the last step's metrics). Read it
  only; a test that writes beside it copies train/ into a workdir of its own."""
  from sleepjax.config_tools import load_config  # pylint: disable=g-import-not-at-top
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("sleeplm")
  (workdir / "data").symlink_to(prepared / "data")
  last = trainer.train(load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny"), str(workdir))
  return workdir, last
