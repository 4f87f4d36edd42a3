"""Report figures (matplotlib, Agg): hypnogram true vs predicted, confusion matrix, robustness
heatmap, label-efficiency curve, retrieval table, example captions. Without matplotlib the report
is written without figures (and says so)."""

import os

import numpy as np

STAGE_ORDER = (0, 4, 1, 2, 3)  # plot W, REM, N1, N2, N3 from top to bottom, as scorers draw it


def _plt():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt
  except ImportError:
    return None


def hypnogram(plt, staging: dict, stages: list[str], sequence: dict | None, path: str):
  """Scored vs predicted stages of one test night: each encoder's probe (and sequence head, when
  it predicted the same night)."""
  enc = next(iter(staging))
  h = staging[enc]["hypnogram"]
  level = {s: i for i, s in enumerate(STAGE_ORDER)}
  series = [("scored", h["true"])] + [(e, staging[e]["hypnogram"]["pred"]) for e in staging]
  series += [(f"{e} (sequence)", r["hypnogram"]["pred"]) for e, r in (sequence or {}).items()
             if r["hypnogram"]["recording"] == h["recording"]
             and len(r["hypnogram"]["pred"]) == len(h["true"])]
  fig, axes = plt.subplots(len(series), 1, figsize=(10, 1.6 * len(series)), sharex=True)
  for ax, (name, y) in zip(axes, series):
    y = np.asarray(y)
    t = np.arange(len(y)) * 0.5
    ax.step(t, [-level.get(int(v), np.nan) if v >= 0 else np.nan for v in y], where="post")
    ax.set_yticks([-i for i in range(len(STAGE_ORDER))], [stages[s] for s in STAGE_ORDER])
    ax.set_ylabel(name, rotation=0, ha="right")
  axes[-1].set_xlabel("minutes")
  axes[0].set_title(f"test night {h['recording']}")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def confusion(plt, staging: dict, stages: list[str], path: str):
  fig, axes = plt.subplots(1, len(staging), figsize=(4 * len(staging), 3.6))
  for ax, (enc, r) in zip(np.atleast_1d(axes), staging.items()):
    cm = np.asarray(r["confusion"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
      for j in range(len(cm)):
        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(stages)), stages)
    ax.set_yticks(range(len(stages)), stages)
    ax.set_xlabel("predicted")
    ax.set_ylabel("scored")
    ax.set_title(f"{enc}: macro-F1 {r['macro_f1']:.3f}")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def robustness(plt, rob: dict, encoders: list[str], path: str):
  """Rows: subsets; columns: modalities present (dots) + macro-F1 per encoder (colour)."""
  mods, subs = rob["modalities"], rob["subsets"]
  encs = [e for e in encoders if e in rob]
  f1 = np.array([[next(x["macro_f1"] for x in rob[e] if x["subset"] == s) for e in encs]
                 for s in subs])
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(2 + 0.45 * (len(mods) + len(encs)) * 2,
                                               1.5 + 0.22 * len(subs)),
                                 gridspec_kw={"width_ratios": [len(mods), len(encs)]})
  member = np.array([[m in s.split("+") for m in mods] for s in subs], float)
  ax0.imshow(member, cmap="Greys", vmin=0, vmax=1.5, aspect="auto")
  ax0.set_xticks(range(len(mods)), mods, rotation=60)
  ax0.set_yticks(range(len(subs)), [str(i + 1) for i in range(len(subs))], fontsize=6)
  ax0.set_title("modalities present")
  im = ax1.imshow(f1, cmap="viridis", vmin=0, vmax=1, aspect="auto")
  for i in range(len(subs)):
    for j in range(len(encs)):
      ax1.text(j, i, f"{f1[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
  ax1.set_xticks(range(len(encs)), encs, rotation=30)
  ax1.set_yticks([])
  ax1.set_title("staging macro-F1")
  fig.colorbar(im, ax=ax1)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def label_curve(plt, curves: dict[str, dict], path: str):
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, curve in curves.items():
    fr = sorted(curve, key=float)
    m = np.array([curve[f]["macro_f1"]["mean"] for f in fr])
    sd = np.array([curve[f]["macro_f1"]["sd"] for f in fr])
    x = [100 * float(f) for f in fr]
    ax.errorbar(x, m, yerr=sd, marker="o", capsize=3, label=name)
  ax.set_xscale("log")
  ax.set_xlabel("% of training epochs labelled")
  ax.set_ylabel("test macro-F1")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def table_figure(plt, header: list[str], rows: list[list], title: str, path: str):
  fig, ax = plt.subplots(figsize=(min(2 + 1.6 * len(header), 16), 0.8 + 0.28 * len(rows)))
  ax.axis("off")
  tab = ax.table(cellText=[[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
                           for r in rows], colLabels=header, loc="center")
  tab.auto_set_font_size(False)
  tab.set_fontsize(7)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def search_figure(stages, stage_names, similarity, events: dict, moments, title: str,
                  path: str) -> bool:
  """A night searched in words: the hypnogram, the similarity trace with the top moments marked,
  and the annotated events beneath (one row per kind). False without matplotlib."""
  plt = _plt()
  if plt is None:
    return False
  level = {s: i for i, s in enumerate(STAGE_ORDER)}
  t = np.arange(len(similarity)) * 0.5  # minutes
  fig, axes = plt.subplots(3, 1, figsize=(11, 5.5), sharex=True,
                           gridspec_kw={"height_ratios": [1.3, 1.5, 0.2 + 0.25 * len(events)]})
  if stages is not None:
    axes[0].step(t, [-level.get(int(v), np.nan) if v >= 0 else np.nan for v in stages],
                 where="post", color="k")
  axes[0].set_yticks([-i for i in range(len(STAGE_ORDER))], [stage_names[s] for s in STAGE_ORDER])
  axes[0].set_ylabel("scored", rotation=0, ha="right")
  axes[1].step(t, similarity, where="post", color="tab:blue")
  for m in moments:
    axes[1].plot(m.epoch * 0.5 + 0.25, m.similarity, "v", color="tab:red")
    axes[1].annotate(m.clock, (m.epoch * 0.5 + 0.25, m.similarity), fontsize=7,
                     xytext=(0, 4), textcoords="offset points", ha="center")
  axes[1].set_ylabel("cosine", rotation=0, ha="right")
  for i, (kind, flags) in enumerate(events.items()):
    on = np.flatnonzero(flags)
    axes[2].broken_barh([(e * 0.5, 0.5) for e in on], (i - 0.4, 0.8), color="tab:orange")
  axes[2].set_yticks(range(len(events)), list(events))
  axes[2].set_ylim(-0.6, len(events) - 0.4)
  axes[2].set_xlabel("minutes")
  axes[0].set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_all(report: dict, out_dir: str) -> dict[str, str]:
  """Every figure the report's tasks allow; {name: file name}."""
  plt = _plt()
  if plt is None:
    return {}
  t, out = report["tasks"], {}

  def save(name, fn, *args):
    fn(plt, *args, os.path.join(out_dir, f"{name}.png"))
    out[name] = f"{name}.png"

  if "staging" in t:
    save("hypnogram", hypnogram, t["staging"], report["stages"], t.get("sequence"))
    save("confusion", confusion, t["staging"], report["stages"])
  if "robustness" in t:
    save("robustness", robustness, t["robustness"], report["encoders"])
  curves = {f"{e} (in-site)": c for e, c in t.get("few_shot", {}).items()}
  curves.update({f"{e} (cross-site)": t["site"][e]["curve"] for e in report["encoders"]
                 if e in t.get("site", {})})
  if curves:
    save("label_curve", label_curve, curves)
  if "retrieval" in t and "skipped" not in t["retrieval"]:
    r = t["retrieval"]
    ks = [k for k in next(iter(r[report["encoders"][0]]["pairs"].values()), {}) if k != "n"]
    rows = [[p, e, *[v[k] for k in ks]] for e in report["encoders"] if e in r
            for p, v in r[e]["pairs"].items()]
    if rows:
      save("retrieval", table_figure, ["query->target", "encoder", *ks], rows, "retrieval R@k")
  lm = t.get("sleeplm", {})
  rows = [[g, e, d, *[v[d][k] for k in v[d]]] for e in report["encoders"] if e in lm
          for g, v in lm[e]["retrieval"]["groups"].items()
          for d in ("signal->text", "text->signal")]
  if rows:
    ks = list(next(iter(lm[report["encoders"][0]]["retrieval"]["groups"].values()))["signal->text"])
    save("text_retrieval", table_figure, ["caption group", "encoder", "direction", *ks], rows,
         "signal <-> text retrieval R@k")
  caps = lm.get("examples")
  if caps:
    save("captions", table_figure, ["epoch", "reference", "generated"],
         [[c["epoch"], c["reference"][:70], c["generated"][:70]] for c in caps], "example captions")
  return out
