"""The tests' cost of `configs/sleeplm.py:tiny` per decoder memory: what tests/conftest.py's
`sleeplm_trained` (training) and test_evaluate_sleeplm's first test (the `sleeplm` eval task)
compile and run, with the tests' XLA flags and no compilation cache (BENCHMARKS.md, SleepLM
conditioning). `python benchmarks/sleeplm_tiny_cost.py <dir> pooled|pooled+tokens`, one fresh
process per measurement."""
import os
import pathlib
import resource
import shutil
import sys
import time

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["JAX_PLATFORMS"] = "cpu"

from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from sleepjax.config_tools import load_config  # pylint: disable=wrong-import-position
from sleepjax.evaluate import run  # pylint: disable=wrong-import-position
from sleepjax.train import trainer  # pylint: disable=wrong-import-position


def clock():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return time.time(), r.ru_utime + r.ru_stime


def main(root: pathlib.Path, memory: str):
  prepared = root / "prepared"  # the tests' cohort, built once and shared by the measurements
  if not (prepared / "data").exists():
    c = load_config("configs/smoke.py:tiny")
    synthetic.write_cohort(prepared / "raw", **c.synthetic)
    prep.prepare(prepared / "raw", prepared / "data", c.prep)
    prep.train_caption_tokenizer(prepared / "data", c.text.vocab_size)
  workdir = root / memory.replace("+", "_")
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir()
  (workdir / "data").symlink_to(prepared / "data")
  def make_config():
    c = load_config("configs/sleeplm.py:tiny")
    c.model.signal.decoder_memory = memory
    return c
  t0, c0 = clock()
  trainer.train(make_config(), str(workdir))
  t1, c1 = clock()
  config = make_config()
  config.eval.tasks = ("sleeplm",)  # as test_evaluate_sleeplm's _config
  config.eval.caption_eval_epochs, config.eval.caption_examples = 12, 3
  config.eval.retrieval_pool = 24
  run.evaluate(config, str(workdir))
  t2, c2 = clock()
  print(f"{memory}: train wall {t1 - t0:.1f} s cpu {c1 - c0:.1f} s; "
        f"eval wall {t2 - t1:.1f} s cpu {c2 - c1:.1f} s")


if __name__ == "__main__":  # prep's worker processes import this module again
  main(pathlib.Path(sys.argv[1]), sys.argv[2])
