"""`sleepjax bench ssl --config=configs/ssl.py --workdir=W`: does pretraining pay off?

synth -> prep -> pretrain (one run per `ssl.pretrain_seeds`) -> evaluate, all resumable:
  W/ssl                 the first pretraining run, a normal workdir (raw/, data/, train/, eval/)
                        that `sleepjax eval` and `sleepjax.api.load` open like any other
  W/ssl-seed<n>         the other seeds' runs (train/, eval/), on W/ssl/data
  W/bench/ssl.json      the comparison and the representation audit over checkpoints

Encoders compared with the same linear probes and label draws (`sleepjax.evaluate.tasks`'s
`few_shot` and `site`): the pretrained encoder, the same network at its random init (per seed) and
a classic EEG band-power featuriser (the `bandpower` eval task). "in-site": probe on the train
split's subjects of every site, scored on the test split's; "held-out site": probe on
`eval.train_sites`, scored on the test subjects of `eval.test_sites`. Pretraining never reads a
stage label. Each number: the mean over pretraining seeds of the mean over `eval.seeds` label draws;
sd over all (pretraining seed, label draw) runs.
"""

import os

import numpy as np

from sleepjax.evaluate import audit, metrics, run as eval_run
from sleepjax.train import checkpoint

PROBES = {"in-site": ("few_shot", lambda r: r), "held-out site": ("site", lambda r: r["curve"])}


def _run_dir(workdir: str, seed: int, first: int) -> str:
  return os.path.join(workdir, "ssl" if seed == first else f"ssl-seed{seed}")


def _prepare(config, ssl_dir: str):
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  raw = os.path.join(ssl_dir, "raw")
  if not os.path.exists(os.path.join(raw, "metadata.csv")):
    synthetic.write_cohort(raw, **config.synthetic)
  prep.prepare(raw, os.path.join(ssl_dir, "data"), config.prep)  # resumable: done ones are kept


def _pretrain(config, run_dir: str):
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  steps = checkpoint.all_steps(os.path.join(run_dir, "train", "checkpoints"))
  if not steps or steps[-1] < config.train.steps:
    trainer.train(config, run_dir)


def _eval(config, run_dir: str, tasks: tuple, step: int = 0) -> dict:
  c = config.copy_and_resolve_references()
  c.eval.tasks, c.eval.checkpoint_step = tasks, step
  return eval_run.evaluate(c, run_dir)


def _audit_over_steps(config, run_dir: str) -> list[dict]:
  """The audit at every kept checkpoint but the last (the final evaluation audits that one)."""
  rows = []
  for step in checkpoint.all_steps(os.path.join(run_dir, "train", "checkpoints"))[:-1]:
    rows.append(_audit_row(_eval(config, run_dir, ("audit",), step)))
  return rows


def _audit_row(report: dict) -> dict:
  a = report["tasks"]["audit"]
  return {"step": report["checkpoint_step"],
          **{enc: {t: a[enc][t]["balanced_accuracy"] for t in a["targets"]}
             for enc in report["encoders"]},
          "chance": {t: a[report["encoders"][0]][t]["chance"] for t in a["targets"]}}


def _runs(task_reports: list[dict], encoder: str, probe: str, fraction: str) -> list[float]:
  """macro-F1 of every label draw of every report (pretraining seed) for one table cell."""
  task, curve = PROBES[probe]
  out = []
  for t in task_reports:
    if encoder in t.get(task, {}):
      out += curve(t[task][encoder])[fraction]["macro_f1"]["values"]
  return out


def summarise(seed_reports: list[dict], baseline: dict, fractions) -> list[dict]:
  """One row per (probe, labels, encoder): mean of per-seed means, sd over every run."""
  rows = []
  for probe in PROBES:
    for fraction in map(str, fractions):
      for encoder in ("pretrained", "random_init", "bandpower"):
        reports = [baseline] if encoder == "bandpower" else seed_reports
        per_seed = [np.mean(v) for r in reports if (v := _runs([r], encoder, probe, fraction))]
        every = _runs(reports, encoder, probe, fraction)
        if not every:
          continue
        rows.append({"probe": probe, "labels": float(fraction), "encoder": encoder,
                     "macro_f1": float(np.mean(per_seed)), "sd": metrics.mean_sd(every)["sd"],
                     "runs": len(every), "per_seed": [float(x) for x in per_seed]})
  return rows


def targets(rows: list[dict]) -> dict:
  """The issue's targets, read from the rows (None where a row is missing)."""
  def get(probe, labels, encoder):
    return next((r["macro_f1"] for r in rows if (r["probe"], r["labels"], r["encoder"]) ==
                 (probe, labels, encoder)), None)
  low = min((r["labels"] for r in rows), default=None)
  p, r_, b = (get("held-out site", low, e) for e in ("pretrained", "random_init", "bandpower"))
  p_all, r_all = get("in-site", 1.0, "pretrained"), get("in-site", 1.0, "random_init")
  ok = lambda cond, *v: None if None in v else bool(cond(*v))  # noqa: E731
  return {"labels": low,
          "held_out_site_pretrained_minus_random": None if None in (p, r_) else p - r_,
          "held_out_site_beats_random_by_0.10": ok(lambda a, c: a >= c + 0.10, p, r_),
          "held_out_site_beats_bandpower": ok(lambda a, c: a >= c, p, b),
          "all_labels_beats_random": ok(lambda a, c: a >= c, p_all, r_all)}


def format_rows(rows: list[dict]) -> str:
  lines = [f"{'probe':<14}{'labels':>7}  {'pretrained':>15}{'random_init':>15}{'bandpower':>15}"]
  keys = sorted({(r["probe"], r["labels"]) for r in rows}, key=lambda k: (k[0], k[1]))
  for probe, labels in keys:
    cells = {r["encoder"]: f"{r['macro_f1']:.3f}±{r['sd']:.3f}" for r in rows
             if (r["probe"], r["labels"]) == (probe, labels)}
    lines.append(f"{probe:<14}{labels:>7.0%}  " + "".join(
        f"{cells.get(e, '-'):>15}" for e in ("pretrained", "random_init", "bandpower")))
  return "\n".join(lines)


def bench_ssl(config, workdir: str) -> dict:
  """See the module docstring; returns what W/bench/ssl.json holds."""
  seeds = list(config.ssl.pretrain_seeds)
  ssl_dir = _run_dir(workdir, seeds[0], seeds[0])
  _prepare(config, ssl_dir)
  data = os.path.join(os.path.abspath(ssl_dir), "data")
  seed_reports, audits = [], {}
  for seed in seeds:
    run_dir = _run_dir(workdir, seed, seeds[0])
    c = config.copy_and_resolve_references()
    c.seed, c.data.dir = seed, data
    _pretrain(c, run_dir)
    steps = _audit_over_steps(c, run_dir) if seed == seeds[0] else []
    tasks = ("few_shot", "site", "audit") + (("bandpower",) if seed == seeds[0] else ())
    final = _eval(c, run_dir, tasks)  # last: W/ssl/eval is this report
    audits[str(seed)] = steps + [_audit_row(final)]
    seed_reports.append(final["tasks"])
  baseline = seed_reports[0].pop("bandpower")
  rows = summarise(seed_reports, baseline, config.eval.fractions)
  print("bench ssl: test macro-F1, mean over pretraining seeds ± sd over every run\n"
        + format_rows(rows))
  for seed, steps in audits.items():
    for a in steps:
      print(f"bench ssl: audit seed {seed} step {a['step']}: " + ", ".join(
          f"{t} {a['pretrained'][t]:.2f} (random {a['random_init'][t]:.2f})"
          for t in audit.TARGETS))
  return {"what": "ssl", "workdir": os.path.abspath(ssl_dir), "pretrain_seeds": seeds,
          "train_steps": config.train.steps, "objective": config.objective.to_dict(),
          "synthetic": config.synthetic.to_dict(), "train_sites": list(config.eval.train_sites),
          "test_sites": list(config.eval.test_sites), "rows": rows, "targets": targets(rows),
          "audit": audits, "bandpower": baseline}


def table_of_runs(run_dirs: list[str]) -> str:
  """The rows, pretrained - random init per run (the pairing: a run's random init is its seed's) and
  the final-checkpoint audit (mean ± sd over runs) of some evaluated workdirs, one pretraining seed
  each (`benchmarks/ssl_recipe.sh`)."""
  import json  # pylint: disable=g-import-not-at-top
  reports = [json.loads(open(os.path.join(d, "eval", "report.json")).read()) for d in run_dirs]
  fractions = sorted({float(f) for r in reports for f in r["tasks"]["few_shot"]["pretrained"]})
  rows = summarise([r["tasks"] for r in reports], {}, fractions)
  lines = [format_rows(rows)]
  per_seed = {(r["probe"], r["labels"], r["encoder"]): r["per_seed"] for r in rows}
  for probe, labels in sorted({(r["probe"], r["labels"]) for r in rows}):
    diffs = np.subtract(*(per_seed[(probe, labels, e)] for e in ("pretrained", "random_init")))
    lines.append(f"pretrained - random, per run: {probe} {labels:.0%} "
                 + " / ".join(f"{d:+.3f}" for d in diffs))
  for enc in ("pretrained", "random_init"):
    cells = []
    for t in audit.TARGETS:
      v = metrics.mean_sd([r["tasks"]["audit"][enc][t]["balanced_accuracy"] for r in reports])
      cells.append(f"{t} {v['mean']:.3f}±{v['sd']:.3f}")
    lines.append(f"audit {enc:<12} " + ", ".join(cells))
  return "\n".join(lines)


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  print(table_of_runs(sys.argv[1:]))
