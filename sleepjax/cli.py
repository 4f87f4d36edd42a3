"""`sleepjax <command> --config=configs/<file>.py[:arg] --config.<key>=<value> --workdir=<dir>`.

Commands:
  synth      write a synthetic PSG cohort (EDF+ / NSRR XML / metadata CSV) to <workdir>/raw
  prep       convert a cohort (config.prep.raw_dir, default <workdir>/raw) into shards in
             <workdir>/data, with a QC report (qc.csv, qc.json); resumable
  caption-tokenizer  train the SentencePiece caption tokenizer (SleepLM) on the training split,
             beside the shards
  train      train (or resume) in <workdir>/train: Orbax checkpoints and TensorBoard logs
  eval       restore the latest checkpoint; linear-probe staging report in <workdir>/eval
  demo       synth -> prep -> caption-tokenizer -> train -> eval (in a separate process), smoke config
  bench      `sleepjax bench prep|read|data|step|ssl|wearable`: measurements as JSON in <workdir>/bench
  config     print the resolved config (`--diff`: only what differs from the preset)
  caption    SleepLM: generated captions per epoch of --recording=ID beside the references
  query      SleepLM: where in --recording=ID --text="..." is: top moments, a PNG in
             <workdir>/query; --describe: the recording in sentences
  sweep      expand a sweep file (configs/sweeps/*.py) into <workdir>/runs/<name>/ and run it:
             --runner=local (here), slurm (sbatch array script) or xpk (TPU slices); resumable
  sweep-run  train one sweep member (resuming), then its validation loss -> <workdir>/result.json
  sweep-report  collect a sweep's results; power-law fits, table (md + json) and plots

`sleepjax <command> --help` lists the config keys; `--debug` keeps full tracebacks;
`sleepjax --version`. `--config` is required for `train`; the other commands default to
configs/smoke.py and say so.
"""

import dataclasses
import inspect
import logging as std_logging
import os
import subprocess
import sys
import traceback

from absl import app, flags, logging

import sleepjax
from sleepjax import config_tools, distributed
from sleepjax.bench import step as bench_step  # pylint: disable=unused-import  (defines the bench step flags)
from sleepjax.config_tools import ConfigError, load_config  # pylint: disable=unused-import  (API)

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: raw/, data/, train/, eval/ live here.")
_RECORDING = flags.DEFINE_string("recording", None, "`caption`, `query`: the recording id "
                                 "(default: the first test recording).")
_TEXT = flags.DEFINE_string("text", None, "`query`: what to look for in the night, in words.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "`query`: how many moments to print.")
_DESCRIBE = flags.DEFINE_bool("describe", False, "`query`: the recording in sentences "
                              "(`api.Model.describe`; --top_k moments per event kind).")
_RUNNER = flags.DEFINE_enum("runner", "local", ["local", "slurm", "xpk"],
                            "`sweep`: run here, write a SLURM array script, or write xpk commands.")
_SUBMIT = flags.DEFINE_bool("submit", False, "`sweep --runner=slurm`: also submit the array with "
                            "sbatch (by default the script is only written).")

DEFAULT_CONFIG = "configs/smoke.py"
REQUIRE_CONFIG = ("train",)  # no silent default: training a model needs a chosen config
_QUIET = ("/orbax/", "/grain/", "/jax/", "/flax/", "/absl/")
_PACKAGES = ("sleepjax", "data_prep", "launch", "tests")  # frames named in one-line errors
# Config sections each command reads (its --help lists these); commands not named: every section.
SECTIONS = {"synth": ("synthetic",), "prep": ("prep", "data"), "caption-tokenizer": ("data", "text"),
            "train": ("seed", "data", "text", "model", "objective", "optim", "mesh", "train"),
            "adapt": ("seed", "data", "optim", "mesh", "train", "adapt"),
            "eval": ("seed", "data", "model", "mesh", "eval")}


@dataclasses.dataclass
class Invocation:
  """The command line, split: what `config` and `demo` need besides the config itself."""
  command: str = ""
  spec: str = DEFAULT_CONFIG
  spec_given: bool = False
  overrides: list = dataclasses.field(default_factory=list)  # [(key, text)]
  diff: str | None = None  # None: no --diff; "": against the preset; else another config spec
  debug: bool = False
  help: bool = False
  rest: list = dataclasses.field(default_factory=list)  # absl flags (--workdir, ...), positionals

  def config_args(self) -> list[str]:
    return [f"--config={self.spec}", *(f"--config.{k}={v}" for k, v in self.overrides)]

  def describe(self) -> str:
    file = self.spec if self.spec.endswith(".json") else self.spec.partition(":")[0]  # gs://...
    path = file if config_tools.is_remote(file) else config_tools.resolve_path(file)
    where = "" if str(path) == file else f" ({path})"
    how = "" if self.spec_given else " (the default; choose one with --config=...)"
    over = (", overrides: " + " ".join(f"{k}={v}" for k, v in self.overrides)
            if self.overrides else "")
    return f"config {self.spec}{where}{how}{over}"


_INVOCATION = Invocation()


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
  if manifest.name == "manifest.json":  # a shard job (prep.num_shards > 1) reports its slice
    print(f"shards + manifest: {manifest}")


def cmd_caption_tokenizer(config, workdir: str):
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


def cmd_adapt(config, workdir: str):
  """Adds modalities to a pretrained model (--config.adapt.pretrained=<its workdir>)."""
  from sleepjax.train import adapt  # pylint: disable=g-import-not-at-top
  last = adapt.adapt(config, workdir)
  if not last:
    print(f"adapt: {workdir} is already adapted (adapt.stage1_steps + adapt.stage2_steps)")
    return
  print("adapt: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))


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
  cmd_caption_tokenizer(config, workdir)
  _show_captions(config.data.dir or os.path.join(workdir, "data"))
  cmd_train(config, workdir)
  # Evaluation restores the checkpoint in a fresh process, as a researcher would.
  subprocess.run([sys.executable, "-m", "sleepjax", "eval", *_INVOCATION.config_args(),
                  f"--workdir={workdir}"], check=True)
  if config.model.family == "sleeplm":
    cmd_caption(config, workdir)
  print(f"\noutputs in {os.path.abspath(workdir)}:\n"
        f"  raw cohort      raw/ (EDF+, NSRR XML, metadata.csv)\n"
        f"  shards          data/ (ArrayRecord + manifest.json)\n"
        f"  checkpoints     train/checkpoints/ (Orbax)\n"
        f"  TensorBoard     train/tb/   (tensorboard --logdir {os.path.join(workdir, 'train', 'tb')})\n"
        f"  report          eval/report.json")


def cmd_caption(config, workdir: str):
  """SleepLM: generated captions per epoch of --recording=ID beside the reference captions."""
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  print(generate.format_captions(generate.caption_recording(config, workdir, _RECORDING.value)))


def cmd_query(config, workdir: str):
  """SleepLM: where in --recording=ID --text="..." is: top moments, a PNG in <workdir>/query;
  --describe: the recording in sentences."""
  from sleepjax import query  # pylint: disable=g-import-not-at-top
  if not _TEXT.value and not _DESCRIBE.value:
    raise ValueError("query needs --text=\"what to look for\" or --describe")
  del config  # the checkpoint's own config decides
  if _DESCRIBE.value:
    print(query.format_description(query.describe_recording(workdir, _RECORDING.value,
                                                            k=_TOP_K.value)))
  if _TEXT.value:
    print(query.format_query(query.query_recording(workdir, _RECORDING.value, _TEXT.value,
                                                   k=_TOP_K.value)))


def cmd_config(config, workdir: str | None = None):
  """Prints the resolved config (`--diff`: only what differs from the preset)."""
  del workdir
  inv = _INVOCATION
  print(f"# {inv.describe()}")
  if inv.diff is None:
    print(config)
    return
  base_spec = inv.diff or inv.spec
  lines = config_tools.diff(config, config_tools.load_config(base_spec))
  print("\n".join(lines) if lines else f"# no difference from {base_spec}")


def cmd_bench(config, workdir: str, what: str):
  from sleepjax import bench  # pylint: disable=g-import-not-at-top
  bench.run(what, config, workdir)


def cmd_sweep(config, workdir: str):
  from sleepjax import sweep  # pylint: disable=g-import-not-at-top
  path = config_tools.resolve_path(_INVOCATION.spec.partition(":")[0])
  sweep.launch(str(path), config, workdir, _RUNNER.value, submit=_SUBMIT.value)


def cmd_sweep_run(config, workdir: str):
  from sleepjax import sweep  # pylint: disable=g-import-not-at-top
  sweep.run_member(config, workdir)


def cmd_sweep_report(config, workdir: str):
  del config
  from sleepjax.sweep import report as sweep_report  # pylint: disable=g-import-not-at-top
  sweep_report.report(workdir)


COMMANDS = {"bench": cmd_bench, "synth": cmd_synth, "prep": cmd_prep,
            "caption-tokenizer": cmd_caption_tokenizer, "train": cmd_train, "adapt": cmd_adapt,
            "eval": cmd_eval, "demo": cmd_demo, "config": cmd_config, "sweep": cmd_sweep,
            "sweep-run": cmd_sweep_run, "sweep-report": cmd_sweep_report, "caption": cmd_caption,
            "query": cmd_query}



# ------------------------------------------------------------------------------- errors
def _where(tb) -> str:
  """`file:line: code` of the innermost frame in sleepjax's own packages."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(sleepjax.__file__)))
  for frame in reversed(traceback.extract_tb(tb)):
    rel = os.path.relpath(os.path.abspath(frame.filename), root)
    if rel.split(os.sep)[0] in _PACKAGES:
      return f" at {rel}:{frame.lineno}: {(frame.line or '').strip()}"
  return ""


def describe_error(e: BaseException, config=None) -> str:
  """One line: the message, plus for a bare KeyError/TypeError-style error what and where."""
  if isinstance(e, (ValueError, FileNotFoundError, NotImplementedError)) and str(e):
    return " ".join(str(e).split())
  if isinstance(e, KeyError) and e.args:
    missing = e.args[0]
    msg = f"KeyError {missing!r}"
    if config is not None:
      keys = [k for k, v in config_tools.flatten(config).items()
              if v == missing or (isinstance(v, tuple) and missing in v)]
      if keys:
        msg += " (from config." + ", config.".join(keys) + ")"
  else:
    msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
  return msg + _where(e.__traceback__)


def _fail(prefix: str, message: str, code: int):
  print(f"{prefix}: {message}", file=sys.stderr)
  sys.exit(code)


# ------------------------------------------------------------------------------- command line
def _positional_count(command: str) -> tuple[int, bool]:
  """(positionals the command takes, whether it needs --workdir)."""
  params = list(inspect.signature(COMMANDS[command]).parameters.values())[1:]
  workdir = params.pop(0) if params and params[0].name == "workdir" else None
  return len(params), workdir is not None and workdir.default is inspect.Parameter.empty


def _run(command: str, config, argv):
  positional = argv[1:]
  n, needs_workdir = _positional_count(command)
  if len(positional) != n:
    _fail(f"sleepjax {command}: error", f"unexpected arguments: {' '.join(positional)}"
          if len(positional) > n else f"needs {n} argument(s); see sleepjax {command} --help", 2)
  _quiet_libraries()
  try:
    distributed.initialize()
    COMMANDS[command](config, _workdir() if needs_workdir else _WORKDIR.value, *positional)
  except Exception as e:  # pylint: disable=broad-except
    if _INVOCATION.debug:
      raise
    _fail(f"sleepjax {command}: error", describe_error(e, config)
          + ("" if isinstance(e, (ValueError, FileNotFoundError))
             else " (--debug for the full traceback)"), 1)


def split_args(command: str, args: list[str]) -> Invocation:
  """Takes --config[=| ]spec, --config.<key>[=| ]value, --diff[=spec], --debug, --help out of
  `args`; the rest (absl flags such as --workdir, positionals) stays in `rest`."""
  inv = Invocation(command=command)
  i = 0
  while i < len(args):
    a = args[i]
    name, eq, value = a.partition("=")

    def take():
      nonlocal i
      if eq:
        return value
      if i + 1 < len(args) and not args[i + 1].startswith("-"):
        i += 1
        return args[i]
      raise ConfigError(f"{name} needs a value ({name}=...)")
    if name in ("--config", "-config"):
      inv.spec, inv.spec_given = take(), True
    elif name.startswith(("--config.", "-config.")):
      inv.overrides.append((name.split(".", 1)[1], take()))
    elif name == "--diff" and command == "config":
      inv.diff = value if eq else ""
    elif a in ("--debug", "-debug"):
      inv.debug = True
    elif a in ("--help", "-h", "-help", "--helpshort"):
      inv.help = True
    else:
      inv.rest.append(a)
    i += 1
  return inv


def command_help(command: str, config, inv: Invocation) -> str:
  """Usage, what the command does, and its config keys with a one-line description each."""
  lines = __doc__.split("Commands:", 1)[1].split("\n\n")[0].splitlines()
  what, found = [], False
  for line in lines:
    if line[2:].split(" ", 1)[0] == command:
      found = True
      what.append(line[2:].split(" ", 1)[1].strip())
    elif found and line.startswith("    "):
      what.append(line.strip())
    elif found:
      break
  what = " ".join(what) or (inspect.getdoc(COMMANDS[command]) or "").split("\n")[0]
  n, needs_workdir = _positional_count(command)
  args = " ".join(f"<{p}>" for p in list(inspect.signature(COMMANDS[command]).parameters)[-n:]) if n else ""
  usage = (f"usage: sleepjax {command} {args + ' ' if args else ''}--config=FILE.py[:ARG] "
           f"[--config.<key>=<value> ...]{' --workdir=DIR' if needs_workdir else ' [--workdir=DIR]'}"
           f"{' [--diff[=FILE.py[:ARG]]]' if command == 'config' else ''} [--debug]")
  sections = SECTIONS.get(command)
  path = config_tools.resolve_path(inv.spec.partition(":")[0])
  keys = config_tools.describe_keys(config, path, sections)
  shipped = ", ".join(config_tools.shipped_configs())
  return "\n".join([
      usage, "", f"{command}: {what}", "",
      f"config keys{' (sections ' + ', '.join(sections) + ')' if sections else ''} of {inv.spec}, "
      "with their values; override any with --config.<key>=<value>:", *keys, "",
      f"configs shipped with sleepjax ({config_tools.CONFIGS}): {shipped}",
      "--config=FILE.py[:ARG] may name one of them (e.g. configs/smoke.py:tiny) or any file."])


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{argv[0]}: error", " ".join(str(e).split()), 2)


def main(argv: list[str] | None = None):
  argv = list(sys.argv if argv is None else argv)
  args = argv[1:]
  if not args or args[0] in ("-h", "--help", "help"):
    print(__doc__.strip())
    sys.exit(0 if args else 2)
  if args[0] in ("--version", "version"):
    print(f"sleepjax {sleepjax.__version__}")
    sys.exit(0)
  command = args[0]
  if command not in COMMANDS:
    _fail("sleepjax", f"unknown command {command!r}{config_tools.suggest(command, COMMANDS)}; "
          f"commands: {', '.join(COMMANDS)} (sleepjax --help)", 2)
  prefix = f"sleepjax {command}"
  try:
    inv = split_args(command, args[1:])
  except ConfigError as e:
    _fail(f"{prefix}: config error", str(e), 2)
  _INVOCATION.__dict__.update(inv.__dict__)
  if command in REQUIRE_CONFIG and not inv.spec_given and not inv.help:
    _fail(f"{prefix}: error", f"--config is required (e.g. --config={DEFAULT_CONFIG}); configs "
          f"shipped: {', '.join(config_tools.shipped_configs())}", 2)
  try:
    config = load_config(inv.spec)
    for key, text in inv.overrides:
      config_tools.override(config, key, text)
  except ConfigError as e:
    if inv.debug:
      raise
    _fail(f"{prefix}: config error", str(e), 2)
  config.lock()
  if inv.help:
    print(command_help(command, config, inv))
    sys.exit(0)
  if command != "config":
    print(f"{prefix}: {inv.describe()}", file=sys.stderr, flush=True)
  app.run(lambda argv_: _run(command, config, argv_), argv=[prefix, *inv.rest],
          flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
