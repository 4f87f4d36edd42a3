"""Config files: finding them (also in an installed wheel), loading, `--config.<key>=<value>`
overrides with one-line errors, flat key listings with one-line descriptions (the trailing
comments of the keys' lines: configs/common.py's, then the preset's), diffs.

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
import json
import os
import pathlib
import tokenize

import ml_collections
from etils import epath

# sleepjax/configs is the repository's configs/ (a symlink in the tree, real files in a wheel).
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
  """A config that cannot be loaded or overridden; the message is one line."""


# The shared base (its keys' meanings are the comments on their lines there).
BASE = CONFIGS / "common.py"
# The sections a sweep file adds (`launch`, `sweep`): their keys' meanings are the comments on their
# lines there (read as text, not imported).
SWEEP_SECTIONS = pathlib.Path(__file__).resolve().parent / "sweep" / "sections.py"


def shipped_configs() -> list[str]:
  """The config files that ship with sleepjax, relative to the configs folder."""
  if not CONFIGS.is_dir():
    return []
  return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")
                if not p.name.startswith("_"))


def is_remote(path) -> bool:
  """A URI (gs://, s3://, ...): not a local file name."""
  return "://" in os.fspath(path)


def storage_path(path) -> epath.Path:
  """A run's path (workdir, checkpoints, data) that may live on cloud storage: a URI is kept as
  it is (os.path.abspath would make `gs://b/x` the local `<cwd>/gs:/b/x`), a local path made
  absolute. etils.epath is what Orbax and Grain read and write through."""
  return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


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
  """`path.py[:arg]` -> get_config(arg); any failure is a one-line ConfigError naming the file.

  A `.json` file (a sweep run's resolved config.json, local or a gs:// URI) is read as it is.
  """
  if spec.endswith(".json"):
    try:
      return ml_collections.ConfigDict(json_tuples(json.loads(storage_path(spec).read_text())))
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f"--config={spec}: {type(e).__name__}: {_one_line(e)}") from None
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


def json_tuples(value):
  """JSON lists back to the tuples configs use (nested dicts followed)."""
  if isinstance(value, dict):
    return {k: json_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(json_tuples(v) for v in value)
  return value


# (section, old key) -> new key: keys renamed since checkpoints were first written.
RENAMED = {("model", "tokenizer"): "signal_tokenizer",
           ("model", "tokenizer_width"): "signal_tokenizer_width"}


# (family, key) -> the value that reproduces what a checkpoint saved before `key` existed did, where
# its preset's default may say otherwise: a new key's default may change behaviour (a better
# default for new runs), a checkpoint that predates the key must keep the behaviour it trained with.
PREDATED = {
    # SleepLM's decoders read the pooled signal tokens alone before the choice existed.
    ("sleeplm", "model.signal.decoder_memory"): "pooled",
}


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (a checkpoint's) -> ConfigDict; JSON lists become tuples. Keys a config
  saved before they existed lacks come from its family's preset (`preset`), so old checkpoints
  restore with the behaviour they trained with."""
  d = json_tuples(d)
  for (section, old), new in RENAMED.items():
    if old in d.get(section, {}):
      d[section][new] = d[section].pop(old)
  config = ml_collections.ConfigDict(d)
  _fill(config, preset(config))
  return config


def preset(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a saved `config`'s family builds now: configs/sleeplm.py at the saved size for
  SleepLM, configs/common.py's base otherwise (for a family the base does not describe, only its
  model keys all families share), with `PREDATED`'s values for the keys the family's checkpoints
  predate."""
  from sleepjax.configs import common, sleeplm  # pylint: disable=g-import-not-at-top
  c = common.get_config()
  family = config.model.family if "model" in config and "family" in config.model else c.model.family
  if family == "sleeplm":
    c = sleeplm.get_config(config.model.size)  # every SleepLM config has saved its size
  elif family != c.model.family:
    c.model = {k: c.model[k] for k in common.SHARED_MODEL}
    c.objective = {}
  for (f, key), value in PREDATED.items():
    if f == family:
      *sections, name = key.split(".")
      node = c
      for s in sections:
        node = node[s]
      node[name] = value
  return c


def _fill(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict):
  """Adds the keys of `defaults` that `config` lacks, section by section."""
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif (isinstance(value, ml_collections.ConfigDict)
          and isinstance(config[key], ml_collections.ConfigDict)):
      _fill(config[key], value)


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


def descriptions() -> dict[str, str]:
  """{key: meaning} of every key of the base and of the sweep sections."""
  return {**comments(SWEEP_SECTIONS), **comments(BASE)}


def describe_keys(config, path: str | os.PathLike | None = None, sections=None) -> list[str]:
  """Lines `key  value  description` for every key (of `sections`, if given)."""
  notes = {**descriptions(), **(comments(path) if path else {})}
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
