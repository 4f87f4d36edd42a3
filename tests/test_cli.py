"""The command line: exact first lines of its errors, `sleepjax config`, per-command help."""

import json
import os
import subprocess
import sys

import pytest

from sleepjax import cli, config_tools
from tests.conftest import REPO


def _main(capsys, *args) -> tuple[int, str, str]:
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sleepjax", *args])
  out = capsys.readouterr()
  return exit_info.value.code or 0, out.out, out.err


def _first_error(err: str) -> str:
  """The first line that is not the `config ...` announcement."""
  return next(line for line in err.splitlines() if ": config configs/" not in line
              and ": config /" not in line)


@pytest.mark.parametrize("args, code, first_line", [
    (["trian"], 2, "sleepjax: unknown command 'trian' (did you mean train?); commands: "),
    (["train", "--config=configs/smoke.py", "--config.train.stepz=3", "--workdir=x"], 2,
     "sleepjax train: config error: unknown key config.train.stepz (did you mean "
     "config.train.steps?)"),
    (["train", "--config=configs/smoke.py", "--config.stepz=3", "--workdir=x"], 2,
     "sleepjax train: config error: unknown key config.stepz (did you mean config.train.steps?)"),
    (["train", "--config=configs/smoke.py", "--config.train.steps=abc", "--workdir=x"], 2,
     "sleepjax train: config error: config.train.steps=abc: expected an integer"),
    (["train", "--config=configs/smoke.py", "--config.data.pair_weights=eeg", "--workdir=x"], 2,
     "sleepjax train: config error: config.data.pair_weights=eeg: expected a dict, "
     "e.g. \"{'eeg+ecg': 2.0}\""),
    (["train", "--config=configs/smoke.py", "--config.model=1", "--workdir=x"], 2,
     "sleepjax train: config error: config.model is a section; set its keys, "
     "e.g. config.model.attention"),
    (["train", "--workdir=x"], 2,
     "sleepjax train: error: --config is required (e.g. --config=configs/smoke.py); configs "
     "shipped: "),
    (["eval", "--config=configs/nope.py", "--workdir=x"], 2,
     "sleepjax eval: config error: --config=configs/nope.py: no such file (configs shipped with "
     "sleepjax: "),
    (["eval", "--config"], 2, "sleepjax eval: config error: --config needs a value (--config=...)"),
    (["bench", "--config=configs/smoke.py", "--workdir=x"], 2,
     "sleepjax bench: error: needs 1 argument(s); see sleepjax bench --help"),
    (["prep", "--config=configs/smoke.py", "--workdir=x", "--bogus"], 2,
     "sleepjax prep: error: Unknown command line flag 'bogus'"),
])
def test_error_first_lines(capsys, args, code, first_line):
  got_code, _, err = _main(capsys, *args)
  assert got_code == code
  line = _first_error(err)
  assert line.startswith(first_line), line
  assert "\\n" not in line and "'\\'" not in line  # no raw reprs


def test_version_and_help(capsys):
  import sleepjax  # pylint: disable=g-import-not-at-top
  code, out, _ = _main(capsys, "--version")
  assert (code, out.strip()) == (0, f"sleepjax {sleepjax.__version__}")
  code, out, _ = _main(capsys, "--help")
  assert code == 0 and "Commands:" in out and "config" in out


def test_command_help_lists_keys_with_descriptions(capsys):
  code, out, _ = _main(capsys, "train", "--help")
  assert code == 0
  assert out.splitlines()[0].startswith("usage: sleepjax train --config=FILE.py[:ARG]")
  lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
  assert "the schedule's length" in lines["train.steps"]  # a comment in configs/smoke.py
  assert "transformer layers" in lines["model.depth"]  # the description table
  assert "synthetic.n_subjects" not in lines  # train does not read the synth section
  code, out, _ = _main(capsys, "synth", "--help", "--config=configs/smoke.py:tiny")
  assert "synthetic.n_subjects" in out and " 6 " in out  # the tiny preset's value


def test_config_prints_resolved_config_and_diff(capsys):
  code, out, _ = _main(capsys, "config", "--config", "configs/smoke.py:tiny",
                       "--config.train.steps=9", "--config.prep.modalities=eeg,ecg")
  assert code == 0
  assert out.startswith("# config configs/smoke.py:tiny")
  assert "steps: 9" in out and "- eeg" in out
  code, out, _ = _main(capsys, "config", "--config=configs/smoke.py:tiny", "--diff",
                       "--config.train.steps=9", "--config.data.pair_weights={'eeg+ecg': 2.0}")
  assert out.splitlines()[1:] == ["data.pair_weights = {'eeg+ecg': 2.0}  (preset: {})",
                                  "train.steps = 9  (preset: 6)"]
  code, out, _ = _main(capsys, "config", "--config=configs/smoke.py:tiny",
                       "--diff=configs/smoke.py")
  assert "train.steps = 6  (preset: 300)" in out.splitlines()


def test_every_command_announces_its_config(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = _main(capsys, "prep", f"--workdir={tmp_path}", "--config.prep.workers=1")
  assert err.splitlines()[0] == (
      "sleepjax prep: config configs/smoke.py (" + str(config_tools.CONFIGS / "smoke.py")
      + ") (the default; choose one with --config=...), overrides: prep.workers=1")
  assert code == 1  # no raw cohort there
  assert err.splitlines()[1].startswith(f"sleepjax prep: error: ")


def test_config_files_resolve_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for spec in ("configs/smoke.py:tiny", "smoke.py:tiny", "smoke:tiny"):
    assert config_tools.load_config(spec).train.steps == 6
  assert "smoke.py" in config_tools.shipped_configs()


def test_override_types():
  c = config_tools.load_config("configs/smoke.py")
  for key, text, value in [("prep.modalities", "eeg,ecg", ("eeg", "ecg")),
                           ("prep.modalities", "('eeg',)", ("eeg",)),
                           ("optim.lr", "1e-3", 1e-3), ("data.dir", "/x", "/x"),
                           ("mesh.data", "2", 2), ("data.pair_weights", "{'eeg+ecg': 2}",
                                                   {"eeg+ecg": 2})]:
    config_tools.override(c, key, text)
    got = c
    for part in key.split("."):
      got = got[part]
    assert (got.to_dict() if hasattr(got, "to_dict") else got) == value


def test_comments_parse_config_lines(tmp_path):
  path = tmp_path / "c.py"
  path.write_text("def get_config():\n  c = X()\n  c.a.b = 1  # first\n  c.d = dict(x=1,  # a dict\n"
                  "      y=2)  # not this\n  c.e, c.f = 1, 2  # no\n  c.g = '#'  # hash\n")
  assert config_tools.comments(path) == {"a.b": "first", "d": "a dict", "g": "hash"}


def test_missing_modality_names_what_the_manifest_has(capsys, tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  (data / "manifest.json").write_text(json.dumps({"modalities": {
      "eeg": {"rate": 128, "channels": ["c4_m1", "c3_m2"]}, "ecg": {"rate": 128, "channels": ["ecg"]}}}))
  code, _, err = _main(capsys, "train", "--config=configs/smoke.py:tiny", f"--workdir={tmp_path}",
                       "--config.data.modalities=eeg,heart_rate")
  assert code == 1
  assert _first_error(err) == (
      f"sleepjax train: error: data.modalities: heart_rate not in the prepared data "
      f"({data / 'manifest.json'} has eeg, ecg); prep with them (prep.modalities) or train on fewer")


def test_deep_key_error_names_the_config_key(capsys, tmp_path, monkeypatch):
  def deep(config, workdir):
    del workdir
    return {"float32": 1}[config.model.dtype]
  monkeypatch.setitem(cli.COMMANDS, "train", deep)
  code, _, err = _main(capsys, "train", "--config=configs/smoke.py:tiny", f"--workdir={tmp_path}",
                       "--config.model.dtype=float16")
  assert code == 1
  assert _first_error(err) == (
      "sleepjax train: error: KeyError 'float16' (from config.model.dtype) at "
      "tests/test_cli.py:" + str(deep.__code__.co_firstlineno + 2)
      + ": return {\"float32\": 1}[config.model.dtype] (--debug for the full traceback)")
  with pytest.raises(KeyError):
    cli.main(["sleepjax", "train", "--config=configs/smoke.py:tiny", f"--workdir={tmp_path}",
              "--config.model.dtype=float16", "--debug"])


def test_unsupported_dtype_in_a_real_run_is_one_line(capsys, tmp_path, prepared):
  os.symlink(prepared / "data", tmp_path / "data")
  code, _, err = _main(capsys, "train", "--config=configs/smoke.py:tiny", f"--workdir={tmp_path}",
                       "--config.model.dtype=float16")
  assert code == 1
  line = _first_error(err)
  assert line.startswith("sleepjax train: error: ") and "float16" in line, line
  assert len([l for l in err.splitlines() if l.startswith("sleepjax train: error")]) == 1


def test_python_dash_m_runs_the_cli():
  result = subprocess.run([sys.executable, "-m", "sleepjax", "--version"], capture_output=True,
                          text=True, cwd=REPO, check=False)
  assert result.returncode == 0 and result.stdout.startswith("sleepjax ")
  result = subprocess.run([sys.executable, "-m", "sleepjax", "trian"], capture_output=True,
                          text=True, cwd=REPO, check=False)
  assert result.returncode == 2
  assert result.stderr.splitlines()[0].startswith("sleepjax: unknown command 'trian'")


def test_pair_weights_with_an_unknown_pair_is_an_error():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sleepjax.data import sampling  # pylint: disable=g-import-not-at-top
  presence = np.ones((4, 3), bool)
  with pytest.raises(ValueError, match=r"^data.pair_weights: unknown pair 'eeg\+ecgg' \(did you "
                     r"mean 'eeg\+ecg'\?\); pairs are <a>\+<b> of eeg, ecg, emg$"):
    sampling.pair_table(presence, ["eeg", "ecg", "emg"], {"eeg+ecg": 1.0, "eeg+ecgg": 2.0})
  pairs, probs, _ = sampling.pair_table(presence, ["eeg", "ecg", "emg"], {"ecg+eeg": 1.0})
  assert pairs == [(0, 1)] and probs.tolist() == [1.0]


def test_metric_writer_leaves_clu_and_sys_modules_alone():
  import importlib  # pylint: disable=g-import-not-at-top
  from sleepjax.train import metrics  # pylint: disable=g-import-not-at-top
  before = set(sys.modules)
  importlib.reload(metrics)
  assert not any(m.startswith("clu.") for m in set(sys.modules) - before)
  assert "clu.metric_writers.summary_writer" not in sys.modules or not isinstance(
      sys.modules["clu.metric_writers.summary_writer"].__dict__.get("SummaryWriter", 0), type(None))
