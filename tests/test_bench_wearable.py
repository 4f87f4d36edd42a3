"""`sleepjax bench wearable` and the eval key it needs (`eval.modalities`): the selection, the
refusal of a modality the checkpoint lacks, the summary, and (slow) the whole benchmark on tiny
data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sleepjax.bench import wearable
from sleepjax.cli import load_config
from sleepjax.configs import common
from sleepjax.evaluate import embed, run as eval_run, tasks

from tests.conftest import REPO


def test_configs():
  full, tiny = (load_config(f"{REPO / 'configs' / 'wearable.py'}{a}") for a in ("", ":tiny"))
  for c in (full, tiny):
    assert c.synthetic.wearables and set(c.eval.modalities) == {"ppg", "actigraphy"}
    assert set(c.adapt.new_modalities) == set(c.eval.modalities) <= set(c.prep.modalities)
    assert not set(c.data.modalities) & set(c.eval.modalities)  # pretraining sees PSG only
  assert full.eval.fractions == (0.01, 0.1, 1.0) and len(full.eval.seeds) >= 3
  with pytest.raises(ValueError, match="unknown arg"):
    load_config(f"{REPO / 'configs' / 'wearable.py'}:huge")


def test_eval_modalities_select_within_the_subset():
  config, mods = common.get_config(), ["eeg", "ecg", "ppg", "actigraphy"]
  assert embed.shown(config, mods) is None and embed.shown(config, mods, ["ecg"]) == ["ecg"]
  config.eval.modalities = ("actigraphy", "ppg")
  assert embed.shown(config, mods) == ["ppg", "actigraphy"]  # model order
  assert embed.shown(config, mods, ["eeg", "ppg"]) == ["ppg"]
  batch = {f"{k}/{m}": np.ones((2, 3)) for k in ("signals", "masks") for m in mods}
  out = embed.with_subset(batch, mods, embed.shown(config, mods))
  assert [m for m in mods if out[f"masks/{m}"].any()] == ["ppg", "actigraphy"]
  ctx = tasks.Context(config, {"recordings": {}}, mods, ["pretrained"], None)
  assert ctx.shown() == ["ppg", "actigraphy"]
  embed.check_shown(config, mods)
  config.eval.modalities = ("ppg", "emg")
  with pytest.raises(ValueError, match=r"\['emg'\] not in the checkpoint's modalities"):
    embed.check_shown(config, mods)


def test_eval_refuses_a_modality_the_checkpoint_lacks(sleep2vec_trained, tiny_config):
  workdir, _ = sleep2vec_trained
  config = tiny_config.copy_and_resolve_references()
  config.eval.modalities = ("eeg", "ppg")
  with pytest.raises(ValueError, match=r"eval.modalities: \['ppg'\] not in"):
    eval_run.evaluate(config, str(workdir))


def _few_shot(values: dict) -> dict:
  return {enc: {f: {"macro_f1": {"values": v}} for f, v in by_fraction.items()}
          for enc, by_fraction in values.items()}


def test_summary_and_verdict():
  def seed(a, s, r):
    return {"adapted": _few_shot({"pretrained": {"0.1": a}, "random_init": {"0.1": r}}),
            "scratch": _few_shot({"pretrained": {"0.1": s}, "random_init": {"0.1": [0.1]}}),
            "psg": _few_shot({"pretrained": {"0.1": [0.9]}})}
  rows = wearable.summarise([seed([0.6, 0.8], [0.5, 0.5], [0.2]), seed([0.4, 0.4], [0.3, 0.5],
                                                                       [0.4])], (0.1,))
  cell = {r["encoder"]: r for r in rows}
  assert cell["adapted"]["per_seed"] == pytest.approx([0.7, 0.4])
  assert cell["adapted"]["macro_f1"] == pytest.approx(0.55) and cell["adapted"]["runs"] == 4
  assert cell["adapted"]["sd"] == pytest.approx(np.std([0.6, 0.8, 0.4, 0.4], ddof=1))
  v = wearable.verdict(rows)["0.1"]
  assert v["adapted_minus_scratch"] == pytest.approx(0.55 - 0.45)
  assert v["adapted_minus_random"] == pytest.approx(0.55 - 0.3)  # the better random net
  assert "adapted" in wearable.format_rows(rows)


@pytest.mark.slow
def test_bench_wearable_end_to_end(tmp_path):
  """configs/wearable.py:tiny through the CLI: every row, and the adapted workdir opens."""
  subprocess.run([sys.executable, "-m", "sleepjax.cli", "bench", "wearable",
                  f"--config={REPO / 'configs' / 'wearable.py'}:tiny", f"--workdir={tmp_path}"],
                 check=True, cwd=REPO)
  out = json.loads((tmp_path / "bench" / "wearable.json").read_text())
  assert {r["encoder"] for r in out["rows"]} == {name for name, _, _ in wearable.ROWS}
  assert all(0.0 <= r["macro_f1"] <= 1.0 for r in out["rows"])
  assert out["reports"][0]["adapted"]["pretrained"]["0.1"]["macro_f1"]["n"] == 1
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  model = api.load(tmp_path / "adapted-seed0")
  assert model.modalities[-2:] == ("ppg", "actigraphy")
