"""The docs break when the code does: generated references are current, links stay inside the
repository, every documented command is a real command with a loadable config, and (slow) every
walkthrough's code blocks run as written."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

DOCS = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
WALKTHROUGHS = sorted((REPO / "docs" / "walkthroughs").glob("*.md"))
_BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def _blocks(path: pathlib.Path) -> list[tuple[str, str]]:
  return _BLOCK.findall(path.read_text())


def test_references_are_generated_from_the_current_code():
  result = subprocess.run([sys.executable, "docs/generate.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_every_config_key_of_every_preset_has_a_meaning():
  text = (REPO / "docs" / "reference" / "config.md").read_text()
  rows = [line for line in text.splitlines() if line.startswith("| `")]
  assert len(rows) > 100
  assert not [r for r in rows if r.rstrip().endswith("|  |")], "keys without a meaning"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_inside_the_repository(path):
  for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
    assert "://" not in target and not target.startswith("mailto:"), (path, target)
    file = (path.parent / target.split("#")[0]).resolve()
    assert file.is_relative_to(REPO) and file.exists(), (path, target)


def _sleepjax_commands(path):
  for lang, code in _blocks(path):
    if lang != "bash":
      continue
    for line in code.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True) if "<" not in line else []
      if words[:1] == ["sleepjax"]:
        yield words


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_walkthrough_commands_exist_and_their_configs_load(path):
  from sleepjax import cli, config_tools  # pylint: disable=g-import-not-at-top
  commands = list(_sleepjax_commands(path))
  assert commands, f"{path.name} documents no sleepjax command"
  for words in commands:
    assert words[1] in cli.COMMANDS, (path.name, words)
    spec = next((w.split("=", 1)[1] for w in words if w.startswith("--config=")), None)
    if spec:
      config = config_tools.load_config(spec)
      for w in words:
        if w.startswith("--config.") and "=" in w:
          key, text = w[len("--config."):].split("=", 1)
          config_tools.override(config, key, text)


@pytest.mark.slow
@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.name)
def test_walkthrough_runs_as_written(path, tmp_path):
  """Each bash block runs in a shell from a scratch directory (configs resolve to the shipped
  ones), python blocks with the same interpreter, in order."""
  env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
  for lang, code in _blocks(path):
    argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (path.name, code, result.stdout[-1500:], result.stderr[-3000:])
