"""`sleepjax sweep-report`: a sweep's results -> saturating power-law fits, a table and plots.

For every finished run (`<workdir>/runs/*/result.json`): validation loss, parameters, tokens,
training FLOPs, training subjects, modality count, and the probe macro-F1 when `eval/report.json`
exists (the staging probe's, and the held-out-site probe's at its fewest labels for the pretrained
and the random-init encoder: the self-supervised scaling curve, configs/ssl.py:scaling). For each axis x (model size, compute, data, modality count) with at least 3 distinct
values, the fit is L(x) = a * x^(-alpha) + c on the frontier (the lowest loss at each x; other
factors vary in a sweep, and the frontier is what the law describes), with 95 % bootstrap
intervals from resampling the runs. Writes `<workdir>/report/report.md`, `report.json` and one
log-log PNG per axis.
"""

import json
import os
import pathlib
import warnings

import numpy as np

from sleepjax.sweep import RESULT, RUNS

AXES = {  # name -> (result key, label)
    "params": ("params", "parameters"),
    "compute": ("flops", "training FLOPs"),
    "data": ("train_subjects", "training subjects"),
    "modalities": ("modality_count", "modalities"),
}
MIN_POINTS = 3


def collect(workdir: str | os.PathLike) -> list[dict]:
  """One row per finished run, sorted by name."""
  rows = []
  for path in sorted(pathlib.Path(workdir, RUNS).glob(f"*/{RESULT}")):
    row = {"name": path.parent.name, **json.loads(path.read_text())}
    report = path.parent / "eval" / "report.json"
    if report.exists():  # `sleepjax eval`: the staging probe's numbers at the top level
      evaluated = json.loads(report.read_text())
      row["probe_macro_f1"] = evaluated.get("pretrained", {}).get("macro_f1")
      row.update(held_out_site(evaluated))
    rows.append(row)
  return rows


def held_out_site(evaluated: dict) -> dict:
  """The `site` task's macro-F1 (mean over label draws) at its fewest labels, per encoder."""
  site = evaluated.get("tasks", {}).get("site", {})
  out = {}
  for enc, col in (("pretrained", "site_macro_f1"), ("random_init", "site_random_macro_f1")):
    if curve := site.get(enc, {}).get("curve"):
      fewest = min(curve, key=float)
      out.update({col: curve[fewest]["macro_f1"]["mean"], "site_labels": float(fewest)})
  return out


def site_curve(rows: list[dict]) -> list[dict]:
  """Held-out-site macro-F1 against training subjects: mean and sd over the runs (seeds) of each."""
  out = []
  for n in sorted({r["train_subjects"] for r in rows if "site_macro_f1" in r}):
    runs = [r for r in rows if r["train_subjects"] == n and "site_macro_f1" in r]
    row = {"train_subjects": n, "runs": len(runs), "labels": runs[0]["site_labels"]}
    for col in ("site_macro_f1", "site_random_macro_f1"):
      v = np.array([r[col] for r in runs if col in r])
      row[col], row[col + "_sd"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out.append(row)
  return out


def power_law(x, a, alpha, c):
  return a * np.power(x, -alpha) + c


def frontier(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The lowest y at each distinct x, sorted by x."""
  xs = np.unique(x)
  return xs, np.array([y[x == v].min() for v in xs])


def fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
  """Least-squares (a, alpha, c) with a >= 0, alpha in [0, 4], 0 <= c <= min(y); None if it fails.

  x is scaled by its geometric mean while fitting, so the problem is well conditioned at any scale.
  """
  from scipy.optimize import curve_fit  # pylint: disable=g-import-not-at-top
  x0 = float(np.exp(np.mean(np.log(x))))
  lo = float(y.min())
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      (a, alpha, c), _ = curve_fit(
          power_law, x / x0, y, p0=(max(float(y.max() - lo), 1e-3), 0.5, 0.5 * lo),
          bounds=([0.0, 0.0, 0.0], [np.inf, 4.0, max(lo, 1e-9)]), maxfev=20000)
  except (RuntimeError, ValueError):
    return None
  return float(a * x0 ** alpha), float(alpha), float(c)


def fit_axis(rows: list[dict], key: str, n_boot: int = 200, seed: int = 0) -> dict:
  """The frontier fit on one axis with bootstrap 95 % intervals (runs resampled with replacement)."""
  x = np.array([r[key] for r in rows], float)
  y = np.array([r["val_loss"] for r in rows], float)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
  x, y = x[ok], y[ok]
  fx, fy = frontier(x, y)
  out = {"points": len(fx), "x": fx.tolist(), "frontier_loss": fy.tolist()}
  if len(fx) < MIN_POINTS:
    out["note"] = f"{len(fx)} distinct value(s); a fit needs {MIN_POINTS}"
    return out
  best = fit(fx, fy)
  if best is None:
    out["note"] = "the fit did not converge"
    return out
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(n_boot):
    i = rng.integers(0, len(x), len(x))
    bx, by = frontier(x[i], y[i])
    if len(bx) >= MIN_POINTS and (p := fit(bx, by)) is not None:
      boots.append(p)
  out.update(a=best[0], alpha=best[1], c=best[2], bootstraps=len(boots))
  if boots:
    lo, hi = np.percentile(np.array(boots), [2.5, 97.5], axis=0)
    out.update(a_ci=[lo[0], hi[0]], alpha_ci=[lo[1], hi[1]], c_ci=[lo[2], hi[2]])
  return out


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown(rows: list[dict], fits: dict) -> str:
  cols = ["name", "params", "modality_count", "train_subjects", "seed", "step", "tokens", "flops",
          "val_loss", "probe_macro_f1", "site_macro_f1", "site_random_macro_f1"]
  out = ["# Sweep report", "", f"{len(rows)} finished runs.", "",
         "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
  out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
  if curve := site_curve(rows):
    out += ["", f"## Held-out-site probe (`site` task, {curve[0]['labels']:.0%} labels) against "
            "training subjects: mean ± sd over runs", "",
            "| training subjects | runs | pretrained | random init | pretrained - random |",
            "| --- | --- | --- | --- | --- |"]
    out += [f"| {c['train_subjects']} | {c['runs']} | {c['site_macro_f1']:.3f} ± "
            f"{c['site_macro_f1_sd']:.3f} | {c['site_random_macro_f1']:.3f} ± "
            f"{c['site_random_macro_f1_sd']:.3f} | "
            f"{c['site_macro_f1'] - c['site_random_macro_f1']:+.3f} |" for c in curve]
  out += ["", "## Power-law fits: val_loss = a * x^(-alpha) + c (frontier, 95 % bootstrap CI)", "",
          "| axis | points | a | alpha | alpha 95 % CI | c | c 95 % CI |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  for axis, f in fits.items():
    if "alpha" not in f:
      out.append(f"| {axis} | {f['points']} | - | - | - | - | {f.get('note', '')} |")
      continue
    ci = lambda k: f"[{f[k][0]:.3g}, {f[k][1]:.3g}]" if k in f else "-"  # pylint: disable=cell-var-from-loop
    out.append(f"| {axis} | {f['points']} | {f['a']:.4g} | {f['alpha']:.3f} | {ci('alpha_ci')} | "
               f"{f['c']:.4g} | {ci('c_ci')} |")
  return "\n".join(out) + "\n"


def plot(rows: list[dict], axis: str, f: dict, path: pathlib.Path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  key, label = AXES[axis]
  x = np.array([r[key] for r in rows], float)
  y = np.array([r["val_loss"] for r in rows], float)
  fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
  ax.scatter(x, y, s=18, color="0.6", label="runs")
  ax.scatter(f["x"], f["frontier_loss"], s=30, color="C0", label="frontier")
  if "alpha" in f:
    grid = np.geomspace(min(f["x"]) / 1.5, max(f["x"]) * 1.5, 100)
    ax.plot(grid, power_law(grid, f["a"], f["alpha"], f["c"]), color="C1",
            label=f"{f['a']:.3g}·x^-{f['alpha']:.3f} + {f['c']:.3g}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(label)
  ax.set_ylabel("validation loss")
  ax.legend(fontsize=7)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def report(workdir: str | os.PathLike, n_boot: int = 200, log=print) -> dict:
  rows = collect(workdir)
  if not rows:
    raise FileNotFoundError(f"{workdir}/{RUNS}: no finished runs ({RESULT}) yet")
  out = pathlib.Path(workdir, "report")
  out.mkdir(parents=True, exist_ok=True)
  fits = {axis: fit_axis(rows, key, n_boot) for axis, (key, _) in AXES.items()}
  plots = {}
  for axis, f in fits.items():
    if f["points"] >= 2:
      plot(rows, axis, f, out / f"{axis}.png")
      plots[axis] = f"{axis}.png"
  result = {"runs": rows, "fits": fits, "plots": plots, "site_curve": site_curve(rows)}
  (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
  table = markdown(rows, fits)
  (out / "report.md").write_text(table + "".join(f"\n![{a}]({p})\n" for a, p in plots.items()))
  log(table)
  log(f"sweep-report: {out}/report.md, report.json, " + ", ".join(plots.values()))
  return result
