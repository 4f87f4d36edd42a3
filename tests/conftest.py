"""Tests run JAX on CPU with 8 simulated devices; set before anything imports JAX."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

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
