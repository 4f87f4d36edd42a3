"""Every key the code reads exists in every preset (they all build on configs/common.py), no
`.get(key, default)` papers over a key the base defines, and a checkpoint's config saved before a
key existed still restores (the key comes from its family's preset, with the value that keeps the
behaviour it trained with)."""

import pathlib
import re

import pytest

from sleepjax import config_tools
from sleepjax.configs import common
from sleepjax.train import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("sleepjax", "data_prep", "launch") for p in (ROOT / d).rglob("*.py")
                 if "configs" not in p.relative_to(ROOT).parts)
# Sections only sweep files have (sleepjax/sweep/sections.py builds them).
SWEEP_SECTIONS = ("launch", "sweep")
# Sections each family defines for itself (the base holds sleep2vec's).
FAMILY_SECTIONS = ("model", "objective")
# `config.<section>.<key>` (or `<section>_cfg.<key>`) read as an attribute (not a method call) or
# with `.get("<key>"`; `ctx.opt("<key>")` reads `eval.<key>` (sleepjax/evaluate/tasks.py).
READ = re.compile(r"\b(?:config\.(\w+)|(\w+)_cfg)\.(?:get\(\s*[\"'](\w+)[\"']|(\w+)\b(?!\s*\())")
OPT = re.compile(r"\bctx\.opt\(\s*[\"'](\w+)[\"']")
# `.get("<key>"` on a config or one of its sections.
GET = re.compile(r"\b\w*(?:config|cfg)\.(?:(\w+)\.)?get\(\s*[\"'](\w+)[\"']")


def _specs() -> list[str]:
  """Each shipped config file's default and every `configs/<file>:<arg>` its docstring names, plus
  each row of a family's size table."""
  specs = []
  for name in config_tools.shipped_configs():
    doc = (config_tools.CONFIGS / name).read_text()
    args = re.findall(rf"configs/{re.escape(name)}:(\w+(?:=[\w.]+)?)(?![=\w<])", doc)
    specs += [f"configs/{name}"] + [f"configs/{name}:{a}" for a in sorted(set(args))]
  specs += [f"configs/sleeplm.py:{s}" for s in ("tiny", "smoke", "small", "medium", "base",
                                                "large", "xl")]
  specs += [f"configs/sleep2vec.py:size={s}" for s in ("1m", "5m", "20m", "50m", "600m", "1b")]
  return sorted(set(specs))


@pytest.fixture(scope="module")
def presets() -> dict[str, dict]:
  return {spec: config_tools.flatten(config_tools.load_config(spec)) for spec in _specs()}


def _reads() -> dict[str, set[str]]:
  """{"train.profile_steps": {files that read it}, ...} over the package, data_prep and launch."""
  out = {}
  for path in SOURCES:
    text, rel = path.read_text(), str(path.relative_to(ROOT))
    keys = [f"{a or b}.{got or attr}" for a, b, got, attr in READ.findall(text)]
    for key in keys + [f"eval.{k}" for k in OPT.findall(text)]:
      out.setdefault(key, set()).add(rel)
  return out


def test_every_key_the_code_reads_is_in_every_preset(presets):
  reads = _reads()
  assert "train.profile_steps" in reads and "model.embed_dim" in reads  # the walk finds reads
  families = {spec: flat["model.family"] for spec, flat in presets.items()}
  missing = []
  for key, files in sorted(reads.items()):
    section = key.split(".")[0]
    if section in SWEEP_SECTIONS:
      specs = [s for s in presets if s.startswith("configs/sweeps/")]
    elif section in FAMILY_SECTIONS and key.split(".")[1] not in common.SHARED_MODEL:
      # One family's key: in every preset of each family that has it, and in some family.
      having = {families[s] for s, flat in presets.items() if _has(flat, key)}
      specs = [s for s in presets if families[s] in having] if having else list(presets)
    else:
      specs = list(presets)
    missing += [f"{s} lacks {key} (read in {', '.join(sorted(files))})"
                for s in specs if not _has(presets[s], key)]
  assert not missing, "\n".join(missing)


def _has(flat: dict, key: str) -> bool:
  return key in flat or any(k.startswith(key + ".") for k in flat)


def test_no_get_default_for_a_key_the_base_defines():
  base = config_tools.flatten(common.get_config())
  names = {k.rsplit(".", 1)[-1] for k in base}
  found = []
  for path in SOURCES:
    rel = str(path.relative_to(ROOT))
    for i, line in enumerate(path.read_text().splitlines(), 1):
      for section, key in GET.findall(line):
        if (f"{section}.{key}" in base) if section else key in names:
          found.append(f"{rel}:{i}: {line.strip()}")
  assert not found, "read these keys directly (the base defines them):\n" + "\n".join(found)


def test_every_preset_has_every_base_key(presets):
  base = config_tools.flatten(common.get_config())
  for spec, flat in presets.items():
    family = flat["model.family"]
    keys = [k for k in base if k.split(".")[0] not in FAMILY_SECTIONS or family == "sleep2vec"
            or k.split(".")[1] in common.SHARED_MODEL]
    assert [k for k in keys if k not in flat] == [], spec


@pytest.mark.parametrize("spec", ["configs/smoke.py:tiny", "configs/sleeplm.py:tiny"])
def test_an_older_checkpoint_config_gains_the_new_keys_from_the_base(spec):
  config = config_tools.load_config(spec)
  saved = config.to_dict()
  # As saved before these keys existed (the old code read them with the base's defaults).
  for section, key in (("train", "profile_steps"), ("data", "device_prefetch"),
                       ("model", "param_dtype"), ("optim", "b1"), ("eval", "caption_examples")):
    del saved[section][key]
  restored = config_tools.from_dict(checkpoint._normalise(saved))  # pylint: disable=protected-access
  assert config_tools.flatten(restored) == config_tools.flatten(config)
  assert checkpoint.config_diff(restored.to_dict(), config.to_dict()) == {}


def _old_sleeplm(size: str = "tiny") -> tuple[dict, dict]:
  """A SleepLM config of `size` as saved before `model.signal.decoder_memory` and
  `objective.caption_groups` existed, and the preset itself (both JSON-normalised)."""
  config = config_tools.load_config(f"configs/sleeplm.py:{size}")
  saved = checkpoint._normalise(config.to_dict())  # pylint: disable=protected-access
  del saved["model"]["signal"]["decoder_memory"], saved["objective"]["caption_groups"]
  return saved, config


@pytest.mark.parametrize("size", ["tiny", "smoke"])
def test_an_older_sleeplm_config_gains_its_familys_keys(size):
  """Keys only SleepLM's preset has come from configs/sleeplm.py (the shared base has none), but
  the memory the checkpoint trained with (pooled), not the preset's (config_tools.PREDATED)."""
  saved, config = _old_sleeplm(size)
  assert config.model.signal.decoder_memory == "pooled+tokens"
  restored = config_tools.from_dict(saved)
  assert restored.model.signal.decoder_memory == "pooled"
  assert restored.objective.caption_groups == "random"
  assert config_tools.flatten(restored) == {**config_tools.flatten(config),
                                            "model.signal.decoder_memory": "pooled"}


def test_an_older_sleeplm_config_keeps_its_behaviour_when_the_default_moves(monkeypatch):
  """A preset default that changes after checkpoints were saved does not change them: the pooled
  memory was the only one before `decoder_memory` existed (config_tools.PREDATED)."""
  from sleepjax.configs import sleeplm  # pylint: disable=g-import-not-at-top
  preset = sleeplm.get_config

  def moved(arg="smoke"):
    c = preset(arg)
    c.model.signal.decoder_memory = "pooled+tokens"
    return c

  monkeypatch.setattr(sleeplm, "get_config", moved)
  saved, _ = _old_sleeplm()
  assert config_tools.from_dict(saved).model.signal.decoder_memory == "pooled"
  saved["model"]["signal"]["decoder_memory"] = "pooled+channels"  # a saved choice is kept
  assert config_tools.from_dict(saved).model.signal.decoder_memory == "pooled+channels"


def test_an_older_sleeplm_checkpoint_evaluates_with_its_own_memory(monkeypatch, tmp_path):
  """`sleepjax eval` with a preset whose memory differs reads the old checkpoint's (pooled), not
  the command line's: the command line fills only keys the checkpoint's family does not have."""
  saved, _ = _old_sleeplm()
  monkeypatch.setattr(checkpoint, "_read_json", lambda *_: saved)
  command_line = config_tools.load_config("configs/sleeplm.py:tiny")
  command_line.model.signal.decoder_memory = "pooled+tokens"
  merged = checkpoint.config_for_eval(command_line, str(tmp_path), 3)
  assert merged.model.signal.decoder_memory == "pooled"


def test_a_checkpoint_config_with_renamed_keys_restores_under_the_new_names():
  """Configs saved before `model.tokenizer` became `model.signal_tokenizer` keep their choice."""
  saved = {"model": {"family": "sleep2vec", "tokenizer": "epoch", "tokenizer_width": 16}}
  config = config_tools.from_dict(saved)
  assert config.model.signal_tokenizer == "epoch" and config.model.signal_tokenizer_width == 16
  assert "tokenizer" not in config.model and "tokenizer_width" not in config.model
