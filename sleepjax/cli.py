"""`sleepjax <command> --config=configs/<file>.py[:arg] --config.<key>=<value> --workdir=<dir>`.

Commands:
  synth      write a synthetic PSG cohort (EDF+ / NSRR XML / metadata CSV) to <workdir>/raw
  prep       convert a cohort (config.prep.raw_dir, default <workdir>/raw) into shards in
             <workdir>/data, with a QC report (qc.csv, qc.json); resumable
  tokenizer  train the SentencePiece caption tokenizer on the training split, beside the shards
  train      train (or resume) in <workdir>/train: Orbax checkpoints and TensorBoard logs
  eval       restore the latest checkpoint; linear-probe staging report in <workdir>/eval
  demo       synth -> prep -> tokenizer -> train -> eval (in a separate process), smoke config
  bench      `sleepjax bench prep|read|data`: measurements as JSON in <workdir>/bench
"""

import importlib.util
import logging as std_logging
import os
import pathlib
import subprocess
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sleepjax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: raw/, data/, train/, eval/ live here.")

_CONFIG_ARGS = []  # the --config arguments as given, for the demo's separate eval process
_QUIET = ("/orbax/", "/grain/", "/jax/", "/flax/", "/absl/")


def _quiet_libraries():
  """Keep library INFO chatter (orbax saves, grain, jax) out of the console; warnings still show."""
  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(s in record.pathname for s in _QUIET)
  logging.get_absl_handler().addFilter(keep)


def _workdir() -> str:
  if not _WORKDIR.value:
    raise ValueError("--workdir is required")
  return _WORKDIR.value


def cmd_synth(config, workdir: str):
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  path = synthetic.write_cohort(os.path.join(workdir, "raw"), **config.synthetic)
  print(f"synthetic cohort: {path.parent}")


def cmd_prep(config, workdir: str):
  from data_prep import prep  # pylint: disable=g-import-not-at-top
  raw = config.prep.raw_dir or os.path.join(workdir, "raw")
  manifest = prep.prepare(raw, config.data.dir or os.path.join(workdir, "data"), config.prep)
  print(f"shards + manifest: {manifest}")


def cmd_tokenizer(config, workdir: str):
  from data_prep import prep  # pylint: disable=g-import-not-at-top
  path = prep.train_caption_tokenizer(config.data.dir or os.path.join(workdir, "data"),
                                      config.text.vocab_size)
  print(f"caption tokenizer: {path}")


def cmd_train(config, workdir: str):
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  last = trainer.train(config, workdir)
  if not last:
    print(f"train: the checkpoint in {workdir} is already at train.steps={config.train.steps}; "
          "raise --config.train.steps to train on")
    return
  print("train: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))


def cmd_eval(config, workdir: str):
  from sleepjax.evaluate import run  # pylint: disable=g-import-not-at-top
  print(run.format_report(run.evaluate(config, workdir)))


def _show_captions(data_dir: str, n_epochs: int = 2):
  """Prints the captions of a few epochs of the first test record, one line per group."""
  from data_prep import writer  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import read_manifest, shard_paths  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(data_dir)
  arrays, meta = records.decode(next(writer.read_records(shard_paths(manifest, "test")[0])))
  for e in range(n_epochs):
    print(f"captions, {meta['recording_id']} epoch {meta['first_epoch'] + e}:")
    for group, texts in records.texts(arrays["captions"]).items():
      if texts[e]:
        print(f"  {group:<12} {texts[e]}")
  print(f"night: {manifest['recordings'][meta['recording_id']]['night_caption']}")


def cmd_demo(config, workdir: str):
  cmd_synth(config, workdir)
  cmd_prep(config, workdir)
  cmd_tokenizer(config, workdir)
  _show_captions(config.data.dir or os.path.join(workdir, "data"))
  cmd_train(config, workdir)
  # Evaluation restores the checkpoint in a fresh process, as a researcher would.
  passthrough = [a for a in _CONFIG_ARGS if a.startswith("--config")]
  subprocess.run([sys.executable, "-m", "sleepjax.cli", "eval", *passthrough,
                  f"--workdir={workdir}"], check=True)
  print(f"\noutputs in {os.path.abspath(workdir)}:\n"
        f"  raw cohort      raw/ (EDF+, NSRR XML, metadata.csv)\n"
        f"  shards          data/ (ArrayRecord + manifest.json)\n"
        f"  checkpoints     train/checkpoints/ (Orbax)\n"
        f"  TensorBoard     train/tb/   (tensorboard --logdir {os.path.join(workdir, 'train', 'tb')})\n"
        f"  report          eval/report.json")


def cmd_bench(config, workdir: str, what: str):
  from sleepjax import bench  # pylint: disable=g-import-not-at-top
  bench.run(what, config, workdir)


COMMANDS = {"bench": cmd_bench, "synth": cmd_synth, "prep": cmd_prep, "tokenizer": cmd_tokenizer,
            "train": cmd_train, "eval": cmd_eval,
            "demo": cmd_demo}


def _run(command: str, config_flag, argv):
  positional = argv[1:]
  if len(positional) != (command == "bench"):  # only `bench` takes one positional: what to measure
    raise app.UsageError(f"unexpected arguments: {' '.join(positional)}" if positional else
                         f"`sleepjax {command}` needs what to measure")
  _quiet_libraries()
  try:
    distributed.initialize()
    COMMANDS[command](config_flag.value, _workdir(), *positional)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"sleepjax {command}: error: {e}", file=sys.stderr)
    sys.exit(1)


def load_config(spec: str):
  """`path.py[:arg]` -> get_config(arg); any failure is one line naming the file."""
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("sleepjax_config", path)
    if module_spec is None or not os.path.exists(path):
      raise FileNotFoundError("no such file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--config={spec}: {type(e).__name__}: {e}") from None


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{argv[0]}: error: {e}", file=sys.stderr)
    sys.exit(2)


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(__doc__.strip())
    sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "help") else 2)
  command = sys.argv.pop(1)
  _CONFIG_ARGS.extend(a for a in sys.argv[1:] if a.startswith("--config"))
  sys.argv[0] = f"sleepjax {command}"
  spec = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")),
              str(REPO / "configs" / "smoke.py"))
  sys.argv = [a for a in sys.argv if not a.startswith("--config=")]  # the file is loaded here
  try:
    config = load_config(spec)
    # ml_collections applies --config.<key>=<value> while defining the flag: a wrong key fails here.
    config_flag = config_flags.DEFINE_config_dict("config", config, lock_config=True)
  except (AttributeError, KeyError) as e:
    print(f"sleepjax {command}: config error: unknown key {e} in a --config.<key> override",
          file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except  (e.g. a field type that cannot be overridden)
    print(f"sleepjax {command}: config error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(lambda argv: _run(command, config_flag, argv), flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
