"""Config files: finding them (also in an installed wheel), loading, `--config.<key>=<value>`
overrides with one-line errors, flat key listings with one-line descriptions, diffs.

A config file is a Python file with `get_config(arg="") -> ml_collections.ConfigDict`; a spec is
`path.py[:arg]`. Relative paths are looked up in the working directory first, then among the
configs that ship with sleepjax (`configs/` in the repository, `sleepjax/configs/` in a wheel), so
`--config=configs/smoke.py` and `--config=smoke.py:tiny` work from any directory.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import os
import pathlib
import tokenize

import ml_collections

# sleepjax/configs is the repository's configs/ (a symlink in the tree, real files in a wheel).
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
  """A config that cannot be loaded or overridden; the message is one line."""


# One-line descriptions of keys whose config line has no comment (a comment always wins).
DESCRIPTIONS = {
    "seed": "seed of model init, data order and the probe",
    "synthetic.n_subjects": "`sleepjax synth`: subjects (one night each)",
    "synthetic.n_sites": "`sleepjax synth`: sites (montages, sensor habits)",
    "synthetic.hours": "`sleepjax synth`: hours per night",
    "synthetic.seed": "`sleepjax synth`: seed of the cohort",
    "synthetic.workers": "`sleepjax synth`: processes simulating subjects in parallel",
    "synthetic.hard": "`sleepjax synth`: the hard benchmark cohort (site chains, planted confound)",
    "prep.modalities": "modalities prep harmonises and stores (sleepjax.modalities.CANONICAL)",
    "prep.channel_map": "cohort channel map (data_prep/channel_maps/<name>.json) or a path",
    "prep.segment_epochs": "30-s epochs per stored segment (the unit of shuffling and eval)",
    "prep.shard_records": "segments per ArrayRecord shard",
    "prep.split_fractions": "train/val/test fractions, split by subject",
    "prep.seed": "seed of the subject split and of caption wording",
    "prep.workers": "prep worker processes (0 = one per core)",
    "data.modalities": "modalities to train on (empty = all the manifest has)",
    "data.window_epochs": "30-s epochs per training window",
    "data.global_batch": "windows per step over all devices and processes",
    "data.modality_dropout": "dropout sampling: probability of masking a present modality",
    "data.min_modalities": "dropout sampling: modalities always kept per record",
    "data.read_threads": "reader threads per process",
    "data.prefetch": "batches prefetched per process",
    "model.family": "model family (sleepjax.families.FAMILIES)",
    "model.tokenizer": "epoch (residual MLP on the flattened 30-s epoch) | patch (conv stem on "
                       "1-s patches)",
    "model.width": "transformer width D",
    "model.depth": "transformer layers",
    "model.heads": "attention heads",
    "model.mlp": "MLP hidden width",
    "model.stem_features": "signal tokenizer filter-bank features",
    "model.patch_seconds": "signal tokenizer patch length (s); divides 30",
    "model.proj_dim": "contrastive projection size",
    "objective.temperature": "InfoNCE temperature",
    "objective.pair_strategy": "which modality pairs the contrastive loss uses",
    "optim.lr": "peak learning rate (AdamW, warmup then cosine)",
    "optim.warmup_steps": "linear warmup steps",
    "optim.weight_decay": "AdamW weight decay",
    "optim.b2": "AdamW beta2",
    "optim.grad_clip": "global gradient-norm clip",
    "mesh.data": "data-parallel mesh axis (-1 = the remaining devices)",
    "mesh.fsdp": "FSDP mesh axis (parameters sharded)",
    "mesh.tensor": "tensor-parallel mesh axis",
    "train.log_every": "steps between logged metrics",
    "train.checkpoint_every": "steps between checkpoints",
    "train.keep_checkpoints": "checkpoints kept",
    "eval.tasks": "tasks `sleepjax eval` runs (README: Evaluation)",
    "eval.train_split": "split the staging probe is fitted on",
    "eval.test_split": "split the staging probe is scored on",
    "eval.probe_steps": "staging probe optimiser steps",
    "eval.probe_lr": "staging probe learning rate",
    "eval.probe_l2": "staging probe L2 penalty",
    "bench.hours": "`sleepjax bench data`: hours per synthetic night",
    "bench.segment_epochs": "`sleepjax bench data`: epochs per stored segment",
    "bench.subjects": "`sleepjax bench data`: synthetic subjects prepared for the benchmark",
    "eval.max_caption_len": "SleepLM eval: longest generated caption (tokens)",
    "launch.eval": "sweeps: also run `sleepjax eval` (linear probe) after each run",
    "launch.stop_after_steps": "sweeps: train at most this many steps per job, then requeue (0 = all)",
    "launch.local.cpu_devices": "local runner: simulated CPU devices per run",
    "launch.local.gpus": "local runner: GPUs shared out among parallel runs",
    "launch.local.max_runs": "local runner: start at most this many runs in this invocation (0 = all)",
    "launch.local.parallel": "local runner: runs at once, each on its share of the devices",
    "launch.local.processes": "local runner: JAX processes per run (launch/local.py)",
    "launch.slurm.account": "SLURM --account",
    "launch.slurm.cpus_per_task": "SLURM --cpus-per-task",
    "launch.slurm.gpus_per_node": "SLURM GPUs per node (one JAX process per GPU)",
    "launch.slurm.job_name": "SLURM --job-name",
    "launch.slurm.max_concurrent": "SLURM array throttle (%N: runs at once; 0 = no limit)",
    "launch.slurm.mem": "SLURM --mem",
    "launch.slurm.nodes": "SLURM nodes per run",
    "launch.slurm.partition": "SLURM --partition",
    "launch.slurm.qos": "SLURM --qos",
    "launch.slurm.setup": "shell lines run before srun (modules, venv activation)",
    "launch.slurm.tasks_per_node": "SLURM tasks (JAX processes) per node: one per GPU",
    "launch.slurm.time": "SLURM --time limit per array task",
    "launch.xpk.base_docker_image": "xpk --base-docker-image (the image the workload builds on)",
    "launch.xpk.cluster": "xpk GKE cluster name",
    "launch.xpk.docker_image": "xpk --docker-image (a prebuilt image; overrides the base image)",
    "launch.xpk.image_setup": "shell lines run in the container before sleepjax",
    "launch.xpk.max_restarts": "xpk restarts of a preempted or failed workload",
    "launch.xpk.num_slices": "TPU slices per run (multislice)",
    "launch.xpk.priority": "xpk workload priority",
    "launch.xpk.project": "Google Cloud project",
    "launch.xpk.tpu_name": "TPU VM name (tpu_vm.sh: gcloud ... tpu-vm ssh --worker=all)",
    "launch.xpk.tpu_type": "TPU slice type, e.g. v5p-128",
    "launch.xpk.vm_setup": "shell lines run on each TPU VM worker before sleepjax",
    "launch.xpk.workload_prefix": "prefix of xpk workload names",
    "launch.xpk.zone": "Google Cloud zone",
    "model.channels": "SleepLM input channels: (modality, channel index) per entry",
    "model.decoder.depth": "SleepLM caption decoder layers",
    "model.decoder.heads": "SleepLM caption decoder attention heads",
    "model.decoder.mlp_ratio": "SleepLM caption decoder MLP width / model width",
    "model.decoder.prefix_len": "SleepLM caption-group prefix tokens",
    "model.decoder.width": "SleepLM caption decoder width",
    "model.embed_dim": "SleepLM shared signal/text embedding size",
    "model.rate": "SleepLM input sampling rate (Hz)",
    "model.recon_depth": "SleepLM reconstruction decoder layers",
    "model.signal.conv_dim": "SleepLM Conv1d patch features",
    "model.signal.decoder_tokens": "SleepLM pooled tokens the decoders attend to",
    "model.signal.depth": "SleepLM signal encoder dual blocks",
    "model.signal.heads": "SleepLM signal encoder attention heads",
    "model.signal.mlp_ratio": "SleepLM signal encoder SwiGLU width / model width",
    "model.signal.patch": "SleepLM samples per patch (16 = 0.25 s at 64 Hz)",
    "model.signal.width": "SleepLM signal encoder width",
    "model.size": "SleepLM size-table row this config was built from",
    "model.text.context": "SleepLM text tower context (tokens)",
    "model.text.depth": "SleepLM text tower layers",
    "model.text.heads": "SleepLM text tower attention heads",
    "model.text.mlp_ratio": "SleepLM text tower MLP width / model width",
    "model.text.width": "SleepLM text tower width",
    "objective.alpha_sex": "DAS-H: kernel factor for a different-sex pair",
    "objective.eps": "DAS-H: floor weight (same-night negatives get it)",
    "objective.gamma_diff": "DAS-H: site gate for a different-site pair",
    "objective.gamma_same": "DAS-H: site gate for a same-site pair",
    "objective.sigma_age": "DAS-H: age kernel width (years)",
    "objective.lambda_cap": "SleepLM: weight of the caption loss",
    "objective.lambda_con": "SleepLM: weight of the contrastive loss",
    "objective.lambda_rec": "SleepLM: weight of the reconstruction loss",
    "optim.b1": "AdamW beta1",
    "optim.end_lr_fraction": "final learning rate as a fraction of the peak",
    "prep.shard_index": "sharded prep: this job's slice (0 .. num_shards-1)",
    "prep.split_fractions.train": "fraction of subjects in train",
    "prep.split_fractions.val": "fraction of subjects in val",
    "prep.split_fractions.test": "fraction of subjects in test",
    "sweep.budgets_flops": "FLOP budgets; a run's steps = budget / analytic FLOPs per step",
    "sweep.modalities": "modalities the subsets are drawn from",
    "sweep.modality_counts": "modality-subset sizes swept",
    "sweep.seeds": "seeds per configuration",
    "sweep.sizes": "rows of the family's size table swept",
    "sweep.subject_fractions": "fractions of training subjects swept (data scaling)",
    "sweep.subsets_per_count": "deterministic modality subsets per count",
}


def shipped_configs() -> list[str]:
  """The config files that ship with sleepjax, relative to the configs folder."""
  if not CONFIGS.is_dir():
    return []
  return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")
                if not p.name.startswith("_"))


def resolve_path(path: str) -> pathlib.Path:
  """A config file path as given, else among the shipped configs (`configs/x.py`, `x.py`, `x`)."""
  p = pathlib.Path(path).expanduser()
  if p.is_file() or p.is_absolute():
    return p
  name = path[len("configs/"):] if path.startswith("configs/") else path
  for candidate in (CONFIGS / name, CONFIGS / f"{name}.py"):
    if candidate.is_file():
      return candidate
  return p


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path.py[:arg]` -> get_config(arg); any failure is a one-line ConfigError naming the file."""
  path, _, arg = spec.partition(":")
  resolved = resolve_path(path)
  if not resolved.is_file():
    shipped = ", ".join(shipped_configs()) or "none"
    raise ConfigError(f"--config={spec}: no such file (configs shipped with sleepjax: {shipped})")
  try:
    module_spec = importlib.util.spec_from_file_location("sleepjax_config", resolved)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config={spec}: {type(e).__name__}: {_one_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config={spec}: get_config() returned a {type(config).__name__}, "
                      "not an ml_collections.ConfigDict")
  return config


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (e.g. in a checkpoint) -> ConfigDict; JSON lists become tuples."""
  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x
  return ml_collections.ConfigDict(tuples(d))


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


# ------------------------------------------------------------------------------- flat keys
def flatten(config, prefix: str = "") -> dict:
  """{"train.steps": 300, ...} in definition order. Sections are descended into; dicts that are
  values (empty, or keyed by non-identifiers such as data.pair_weights' "eeg+ecg") stay leaves."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if (isinstance(value, (ml_collections.ConfigDict, dict)) and len(value)
        and all(str(k).isidentifier() for k in value)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return out


def suggest(word: str, choices, n: int = 1) -> str:
  """' (did you mean x?)' for the closest choice, else ''."""
  choices = list(choices)
  close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
  if not close:  # match on the last part alone: `stepz` -> `train.steps`
    tails = {c.rsplit(".", 1)[-1]: c for c in choices}
    close = [tails[t] for t in difflib.get_close_matches(word.rsplit(".", 1)[-1], tails, n=n)]
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def _parse(key: str, current, text: str):
  """The override text as a value of the current value's type."""
  def bad(expected: str):
    return ConfigError(f"config.{key}={text}: expected {expected}")
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
      return True
    if low in ("false", "0", "no", "off"):
      return False
    raise bad("true or false")
  if isinstance(current, int):
    try:
      return int(text.replace("_", ""))
    except ValueError:
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a number") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    stripped = text.strip()
    if stripped[:1] in "([":
      try:
        value = ast.literal_eval(stripped)
      except (ValueError, SyntaxError):
        raise bad("a tuple, e.g. a,b or (1, 2)") from None
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    items = [s.strip() for s in stripped.split(",") if s.strip()]
    if current and not isinstance(current[0], str):
      return tuple(_parse(key, current[0], s) for s in items)
    return tuple(items)
  if isinstance(current, (dict, ml_collections.ConfigDict)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if not isinstance(value, dict):
      raise bad("a dict, e.g. \"{'eeg+ecg': 2.0}\"")
    return value
  try:  # None or another type: a Python literal, else the text
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config: ml_collections.ConfigDict, key: str, text: str):
  """Sets config.<key> from command-line text; unknown keys and bad values raise ConfigError."""
  keys = flatten(config)
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      raise ConfigError(f"unknown key config.{key}" + suggest(key, keys).replace(
          "did you mean ", "did you mean config."))
    if i < len(parts) - 1:
      node = node[part]
  current = node[parts[-1]]
  if isinstance(current, ml_collections.ConfigDict) and len(current) and key not in keys:
    sub = [k for k in keys if k.startswith(key + ".")]
    raise ConfigError(f"config.{key} is a section; set its keys, e.g. config.{sub[0]}")
  value = _parse(key, current, text)
  try:
    with config.unlocked() if isinstance(config, ml_collections.ConfigDict) else _Null():
      node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{key}={text}: {_one_line(e)}") from None


class _Null:
  def __enter__(self):
    return self

  def __exit__(self, *_):
    return False


# ------------------------------------------------------------------------------- descriptions
def comments(path: str | os.PathLike) -> dict[str, str]:
  """{"train.steps": "the schedule's length"} from trailing comments of `c.train.steps = ...`."""
  out = {}
  try:
    source = pathlib.Path(path).read_text()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
  except (OSError, tokenize.TokenError, SyntaxError):
    return out
  line: list[tokenize.TokenInfo] = []
  for tok in tokens:
    if tok.type == tokenize.COMMENT and line:
      target = _target(line)
      if target and target not in out:
        out[target] = tok.string.lstrip("#").strip()
    if tok.type in (tokenize.NEWLINE, tokenize.NL):
      line = []
    elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
      line.append(tok)
  return out


def _target(line: list[tokenize.TokenInfo]) -> str | None:
  """`c.train.steps = ...` -> "train.steps" (one dotted target, the variable name dropped)."""
  names = []
  for i, tok in enumerate(line):
    if tok.type == tokenize.OP and tok.string == "=":
      return ".".join(names[1:]) if len(names) > 1 and i == 2 * len(names) - 1 else None
    if i % 2 == 0 and tok.type == tokenize.NAME:
      names.append(tok.string)
    elif not (i % 2 == 1 and tok.string == "."):
      return None
  return None


def describe_keys(config, path: str | os.PathLike | None = None, sections=None) -> list[str]:
  """Lines `key  value  description` for every key (of `sections`, if given)."""
  notes = {**DESCRIPTIONS, **(comments(path) if path else {})}
  keys = {k: v for k, v in flatten(config).items()
          if not sections or k.split(".")[0] in sections}
  width = max((len(k) for k in keys), default=0)
  vwidth = min(max((len(repr(v)) for v in keys.values()), default=0), 24)
  lines = []
  for k, v in keys.items():
    value = repr(v)
    value = value if len(value) <= 24 else value[:21] + "..."
    lines.append(f"  {k:<{width}}  {value:<{vwidth}}  {notes.get(k, '')}".rstrip())
  return lines


def diff(config, base) -> list[str]:
  """`key = value  (preset: value)` for every key that differs from `base`."""
  new, old = flatten(config), flatten(base)
  lines = []
  for k in list(old) + [k for k in new if k not in old]:
    if k not in new:
      lines.append(f"{k}  (removed; preset: {old[k]!r})")
    elif k not in old:
      lines.append(f"{k} = {new[k]!r}  (not in the preset)")
    elif new[k] != old[k]:
      lines.append(f"{k} = {new[k]!r}  (preset: {old[k]!r})")
  return lines
