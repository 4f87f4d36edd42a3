"""Tests run JAX on CPU with 8 simulated devices; set before anything imports JAX."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
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
