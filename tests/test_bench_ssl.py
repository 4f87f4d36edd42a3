"""`sleepjax bench ssl`: its config, the band-power baseline, the summary, and (slow) the whole
benchmark on tiny data leaving a workdir that `sleepjax eval` and `sleepjax.api.load` open."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sleepjax.bench import ssl
from sleepjax.cli import load_config
from sleepjax.evaluate import audit, bandpower

from tests.conftest import REPO


def test_configs():
  full, tiny = (load_config(f"{REPO / 'configs' / 'ssl.py'}{a}") for a in ("", ":tiny"))
  for c in (full, tiny):
    assert c.synthetic.hard and c.synthetic.n_sites == 3
    assert set(c.eval.train_sites).isdisjoint(c.eval.test_sites)
    assert {"audit", "bandpower"} <= set(c.eval.tasks)
    assert c.data.modality_sampling == "pair_first" and "eeg+spo2" in c.data.pair_weights
  assert len(full.ssl.pretrain_seeds) >= 3 and tiny.train.steps < full.train.steps
  with pytest.raises(ValueError, match="unknown arg"):
    load_config(f"{REPO / 'configs' / 'ssl.py'}:huge")


def test_scaling_sweep_expands_seed_by_seed(tmp_path):
  """configs/ssl.py:scaling is a sweep file: one evaluated run per (seed, night fraction), each
  the full recipe on the given data with its fraction of the train split's subjects."""
  from sleepjax import sweep  # pylint: disable=g-import-not-at-top
  path = str(REPO / "configs" / "ssl.py")
  config = load_config(f"{path}:scaling")
  config.data.dir = str(tmp_path / "data")
  runs = sweep.expand(path, config, str(tmp_path / "w"))
  assert [r["name"] for r in runs] == [f"nights{f}-s{s}" for s in (0, 1) for f in (0.25, 0.5, 1)]
  run = sweep.read_run_config(f"{runs[0]['dir']}/config.json")
  full = load_config(path)
  assert (run.data.subject_fraction, run.seed, run.data.dir) == (0.25, 0, config.data.dir)
  assert run.train.steps == full.train.steps and run.data.pair_weights == full.data.pair_weights
  assert "site" in run.eval.tasks and min(run.eval.fractions) == 0.01 and config.launch.eval
  with pytest.raises(ValueError, match="configs/ssl.py:scaling"):
    list(sweep.load_module(path).sweep(full))


def test_bandpower_features_find_the_band():
  rate, t = 100.0, np.arange(3000) / 100.0
  x = np.stack([np.sin(2 * np.pi * f * t) for f in (2.0, 10.0, 20.0)])[:, None]  # [3, 1, S]
  f = bandpower.features(x, rate)
  k = len(bandpower.BANDS)
  relative = f[:, k:2 * k]
  assert f.shape == (3, 2 * k + 1)
  assert relative.argmax(1).tolist() == [0, 2, 4]  # delta, alpha, beta
  assert relative.max(1).min() > 0.99


def _task(values_by_fraction):
  return {f: {"macro_f1": {"values": v}} for f, v in values_by_fraction.items()}


def test_summary_and_targets():
  seeds = [{"few_shot": {"pretrained": _task({"0.01": [0.6, 0.8], "1.0": [0.9]}),
                         "random_init": _task({"0.01": [0.5, 0.5], "1.0": [0.8]})},
            "site": {"pretrained": {"curve": _task({"0.01": [0.7, 0.7], "1.0": [0.9]})},
                     "random_init": {"curve": _task({"0.01": [0.5, 0.7], "1.0": [0.8]})}}},
           {"few_shot": {"pretrained": _task({"0.01": [0.4, 0.4], "1.0": [0.6]}),
                         "random_init": _task({"0.01": [0.5, 0.5], "1.0": [0.8]})},
            "site": {"pretrained": {"curve": _task({"0.01": [0.9, 0.9], "1.0": [0.9]})},
                     "random_init": {"curve": _task({"0.01": [0.5, 0.7], "1.0": [0.8]})}}}]
  baseline = {"few_shot": {"bandpower": _task({"0.01": [0.3, 0.5], "1.0": [0.6]})},
              "site": {"bandpower": {"curve": _task({"0.01": [0.8, 0.8], "1.0": [0.6]})}}}
  rows = ssl.summarise(seeds, baseline, (0.01, 1.0))
  cell = {(r["probe"], r["labels"], r["encoder"]): r for r in rows}
  p = cell[("in-site", 0.01, "pretrained")]
  assert p["per_seed"] == pytest.approx([0.7, 0.4]) and p["macro_f1"] == pytest.approx(0.55)
  assert p["runs"] == 4 and p["sd"] == pytest.approx(np.std([0.6, 0.8, 0.4, 0.4], ddof=1))
  assert cell[("held-out site", 0.01, "bandpower")]["macro_f1"] == pytest.approx(0.8)
  t = ssl.targets(rows)
  assert t["labels"] == 0.01
  assert t["held_out_site_pretrained_minus_random"] == pytest.approx(0.2)
  assert t["held_out_site_beats_random_by_0.10"] and t["held_out_site_beats_bandpower"]
  assert t["all_labels_beats_random"] is False  # in-site, all labels: 0.75 vs 0.8
  assert "held-out site" in ssl.format_rows(rows)


def test_table_of_runs_pairs_each_run_with_its_random_init(tmp_path):
  """`python -m sleepjax.bench.ssl <workdirs>` (benchmarks/ssl_recipe.sh): pretrained - random
  init per run, in the runs' order, beside the table and the audit."""
  dirs = []
  for i, (p, r) in enumerate([(0.7, 0.5), (0.4, 0.6)]):
    tasks = {"few_shot": {"pretrained": _task({"0.01": [p]}), "random_init": _task({"0.01": [r]})},
             "site": {e: {"curve": _task({"0.01": [v]})} for e, v in
                      (("pretrained", p), ("random_init", r))},
             "audit": {e: {t: {"balanced_accuracy": 0.5} for t in audit.TARGETS}
                       for e in ("pretrained", "random_init")}}
    (tmp_path / f"r{i}" / "eval").mkdir(parents=True)
    (tmp_path / f"r{i}" / "eval" / "report.json").write_text(json.dumps({"tasks": tasks}))
    dirs.append(str(tmp_path / f"r{i}"))
  out = ssl.table_of_runs(dirs)
  assert "pretrained - random, per run: held-out site 1% +0.200 / -0.200" in out
  assert "pretrained - random, per run: in-site 1% +0.200 / -0.200" in out
  assert "audit pretrained" in out


@pytest.mark.slow
def test_bench_ssl_end_to_end(tmp_path):
  """synth -> prep -> pretrain -> eval on tiny data; W/ssl is a normal workdir."""
  env_cmd = [sys.executable, "-m", "sleepjax", "bench", "ssl",
             f"--config={REPO / 'configs' / 'ssl.py'}:tiny", "--config.ssl.pretrain_seeds=(0,)",
             f"--workdir={tmp_path}"]
  subprocess.run(env_cmd, check=True, cwd=REPO)
  out = json.loads((tmp_path / "bench" / "ssl.json").read_text())
  encoders = {r["encoder"] for r in out["rows"]}
  assert encoders == {"pretrained", "random_init", "bandpower"}
  assert {r["probe"] for r in out["rows"]} == {"in-site", "held-out site"}
  assert [a["step"] for a in out["audit"]["0"]][-1] == 4
  report = json.loads((tmp_path / "ssl" / "eval" / "report.json").read_text())
  assert set(report["tasks"]) == {"few_shot", "site", "audit", "bandpower"}
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  model = api.load(str(tmp_path / "ssl"))
  night = model.embed(str(next((tmp_path / "ssl" / "raw" / "edf").glob("*.edf"))))
  assert night.epoch.ndim == 2 and np.isfinite(night.epoch).all()
