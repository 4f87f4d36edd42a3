"""`sleepjax bench wearable --config=configs/wearable.py --workdir=W`: staging from a wrist (PPG +
actigraphy alone) on held-out subjects, by a PSG model adapted to the wearables vs the same
architecture trained from scratch on them vs a random encoder.

synth -> prep -> per training seed n (`wearable.seeds`), all resumable:
  W/cohort               one cohort, every night with PSG and PPG + actigraphy (raw/, data/)
  W/psg-seed<n>          pretrained on the PSG modalities only (`data.modalities`)
  W/adapted-seed<n>      `sleepjax adapt` of W/psg-seed<n> with `adapt.new_modalities`
  W/scratch-seed<n>      the same network on the wearable modalities alone, from scratch, for as
                         many steps as pretraining and adaptation together
  W/bench/wearable.json  the rows below

Every encoder is probed the same way (`few_shot`: linear probes at `eval.fractions` of the train
split's labelled epochs, `eval.seeds` label draws, scored on the test split's subjects), shown only
`eval.modalities`. Rows: adapted, scratch, random (each run's random init), and for reference the
PSG model shown its own PSG signals. Each number: the mean over training seeds of the mean over
label draws; sd over every (training seed, label draw) run. `python -m sleepjax.bench.wearable W
[seed ...]` prints the same rows from runs trained and evaluated one command at a time.
"""

import os

import numpy as np

from sleepjax.evaluate import metrics, run as eval_run
from sleepjax.train import checkpoint

# (row, run, encoder of that run's eval report)
ROWS = (("adapted", "adapted", "pretrained"), ("scratch", "scratch", "pretrained"),
        ("random (adapted's net)", "adapted", "random_init"),
        ("random (scratch's net)", "scratch", "random_init"),
        ("PSG model on PSG (reference)", "psg", "pretrained"))


def _prepare(config, cohort: str):
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  raw = os.path.join(cohort, "raw")
  if not os.path.exists(os.path.join(raw, "metadata.csv")):
    synthetic.write_cohort(raw, **config.synthetic)
  prep.prepare(raw, os.path.join(cohort, "data"), config.prep)  # resumable: done ones are kept


def _done(run_dir: str, steps: int) -> bool:
  return max(checkpoint.all_steps(os.path.join(run_dir, "train", "checkpoints")),
             default=0) >= steps


def _eval(config, run_dir: str, modalities) -> dict:
  c = config.copy_and_resolve_references()
  c.eval.modalities = tuple(modalities)
  return eval_run.evaluate(c, run_dir)["tasks"]["few_shot"]


def run_seed(config, workdir: str, data: str, seed: int) -> dict:
  """Pretrains, adapts and trains from scratch with one seed; {run: its few_shot report}."""
  from sleepjax.train import adapt, trainer  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.seed, c.data.dir = seed, data
  new = tuple(c.adapt.new_modalities)
  dirs = {r: os.path.join(workdir, f"{r}-seed{seed}") for r in ("psg", "adapted", "scratch")}
  if not _done(dirs["psg"], c.train.steps):
    trainer.train(c, dirs["psg"])
  a = c.copy_and_resolve_references()
  a.adapt.pretrained = dirs["psg"]
  adapt.adapt(a, dirs["adapted"])  # returns at once when both stages are done
  s = c.copy_and_resolve_references()
  s.data.modalities = new
  s.train.steps = c.train.steps + c.adapt.stage1_steps + c.adapt.stage2_steps
  if not _done(dirs["scratch"], s.train.steps):
    trainer.train(s, dirs["scratch"])
  shown = tuple(c.eval.modalities) or new
  return {"adapted": _eval(c, dirs["adapted"], shown), "scratch": _eval(c, dirs["scratch"], shown),
          "psg": _eval(c, dirs["psg"], c.data.modalities)}


def summarise(seed_reports: list[dict], fractions) -> list[dict]:
  """One row per (labels, encoder): mean of per-seed means, sd over every run."""
  rows = []
  for fraction in map(str, fractions):
    for name, run_name, encoder in ROWS:
      per_seed = [r[run_name][encoder][fraction]["macro_f1"]["values"] for r in seed_reports]
      every = [v for values in per_seed for v in values]
      if not every:
        continue
      rows.append({"labels": float(fraction), "encoder": name,
                   "macro_f1": float(np.mean([np.mean(v) for v in per_seed])),
                   "sd": metrics.mean_sd(every)["sd"], "runs": len(every),
                   "per_seed": [float(np.mean(v)) for v in per_seed]})
  return rows


def verdict(rows: list[dict]) -> dict:
  """Per label fraction: adapted minus scratch and minus the better random encoder."""
  out = {}
  for labels in sorted({r["labels"] for r in rows}):
    f1 = {r["encoder"]: r["macro_f1"] for r in rows if r["labels"] == labels}
    rand = max(f1[n] for n, _, e in ROWS if e == "random_init")
    out[str(labels)] = {"adapted_minus_scratch": f1["adapted"] - f1["scratch"],
                        "adapted_minus_random": f1["adapted"] - rand,
                        "scratch_minus_random": f1["scratch"] - rand}
  return out


def saved_reports(workdir: str, seed: int) -> dict:
  """{run: its few_shot report} from the runs' eval/report.json (the runs trained and evaluated
  one command at a time: BENCHMARKS.md)."""
  import json  # pylint: disable=g-import-not-at-top
  out = {}
  for run in ("psg", "adapted", "scratch"):
    with open(os.path.join(workdir, f"{run}-seed{seed}", "eval", "report.json")) as f:
      out[run] = json.load(f)["tasks"]["few_shot"]
  return out


def format_rows(rows: list[dict]) -> str:
  labels = sorted({r["labels"] for r in rows})
  lines = [f"{'encoder':<30}" + "".join(f"{f'{x:.0%} labels':>16}" for x in labels)]
  for name, _, _ in ROWS:
    cells = {r["labels"]: f"{r['macro_f1']:.3f}±{r['sd']:.3f}" for r in rows
             if r["encoder"] == name}
    lines.append(f"{name:<30}" + "".join(f"{cells.get(x, '-'):>16}" for x in labels))
  return "\n".join(lines)


def bench_wearable(config, workdir: str) -> dict:
  """See the module docstring; returns what W/bench/wearable.json holds."""
  cohort = os.path.join(workdir, "cohort")
  _prepare(config, cohort)
  data = os.path.join(os.path.abspath(cohort), "data")
  seeds = list(config.wearable.seeds)
  reports = [run_seed(config, workdir, data, seed) for seed in seeds]
  rows = summarise(reports, config.eval.fractions)
  print("bench wearable: test macro-F1 from " + "+".join(config.eval.modalities) + ", mean over "
        "training seeds ± sd over every run\n" + format_rows(rows))
  return {"what": "wearable", "workdir": os.path.abspath(workdir), "seeds": seeds,
          "shown": list(config.eval.modalities), "psg": list(config.data.modalities),
          "new": list(config.adapt.new_modalities), "pretrain_steps": config.train.steps,
          "adapt_steps": [config.adapt.stage1_steps, config.adapt.stage2_steps],
          "scratch_steps": config.train.steps + config.adapt.stage1_steps
                           + config.adapt.stage2_steps,
          "label_seeds": list(config.eval.seeds), "synthetic": config.synthetic.to_dict(),
          "rows": rows, "verdict": verdict(rows), "reports": reports}


if __name__ == "__main__":  # python -m sleepjax.bench.wearable W [seed ...]
  import sys  # pylint: disable=g-import-not-at-top
  runs = [saved_reports(sys.argv[1], int(seed)) for seed in sys.argv[2:] or ["0"]]
  fractions = sorted({float(f) for f in runs[0]["adapted"]["pretrained"]})
  table = summarise(runs, fractions)
  print(format_rows(table))
  print(verdict(table))
