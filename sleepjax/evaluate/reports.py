"""The evaluation report: report.json (everything), report.md (tables a person reads) and PNGs
(`plots`), plus the headline table the CLI prints."""

import json
import math
import os

import numpy as np

from sleepjax.evaluate import plots


def split_summary(manifest: dict) -> dict:
  """Subjects, sites and recordings of every split (for the report and the disjointness checks)."""
  out = {}
  for name, s in manifest["splits"].items():
    recs = s["recordings"]
    out[name] = {"subjects": s["subjects"], "recordings": len(recs),
                 "sites": sorted({manifest["recordings"][r]["site"] for r in recs})}
  return out


def _get(d, *keys):
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def _smallest(curve: dict | None) -> tuple[str | None, dict | None]:
  if not curve:
    return None, None
  f = min(curve, key=float)
  return f, curve[f]


def headline(report: dict) -> list[dict]:
  """One row per encoder (and YASA): the number each task is summarised by."""
  t = report["tasks"]
  rows = []
  for enc in report["encoders"]:
    row = {"encoder": enc,
           "staging_macro_f1": _get(t, "staging", enc, "macro_f1"),
           "staging_kappa": _get(t, "staging", enc, "kappa"),
           "sequence_macro_f1": (_get(t, "sequence", enc, "over_seeds", "macro_f1")
                                 or _get(t, "sequence", enc, "macro_f1"))}
    frac, point = _smallest(_get(t, "few_shot", enc))
    if point:
      row[f"few_shot_{frac}_macro_f1"] = point["macro_f1"]
    frac, point = _smallest(_get(t, "site", enc, "curve"))
    if point:
      row[f"cross_site_{frac}_macro_f1"] = point["macro_f1"]
    if rob := _get(t, "robustness", enc):
      row["robustness_mean_macro_f1"] = float(np.mean([r["macro_f1"] for r in rob]))
    row["events_mean_f1"] = _get(t, "events", enc, "mean_f1")
    row["ahi_mae"] = _get(t, "clinical", enc, "ahi", "mae")
    row["age_mae"] = _get(t, "clinical", enc, "age", "mae")
    row["sex_auroc"] = _get(t, "clinical", enc, "sex", "auroc")
    row["retrieval_mean_R@1"] = _get(t, "retrieval", enc, "mean", "R@1")
    row["text_R@1"] = _get(t, "sleeplm", enc, "retrieval", "mean", "signal->text R@1")
    row["zero_shot_macro_f1"] = _get(t, "sleeplm", enc, "zero_shot", "macro_f1")
    row["caption_bleu"] = _get(t, "sleeplm", enc, "captioning", "bleu")
    row["caption_numeric_faithfulness"] = _get(t, "sleeplm", enc, "captioning",
                                               "numeric_faithfulness")
    row["caption_names_stage"] = _get(t, "sleeplm", enc, "conditioning", "caption_names_stage")
    row["search_mean_auroc"] = _get(t, "search", enc, "mean_prompt_auroc")
    for extra in ("supervised", "finetune"):
      if (v := _get(t, extra, enc, "macro_f1")) is not None:
        row[f"{extra}_macro_f1"] = v
    rows.append({k: v for k, v in row.items() if v is not None})
  if (y := t.get("yasa")) and "macro_f1" in y:
    rows.append({"encoder": "yasa (external)", "staging_macro_f1": y["macro_f1"],
                 "staging_kappa": y["kappa"]})
  return rows


def _fmt(v) -> str:
  if isinstance(v, dict) and "mean" in v:
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.3f}"
  return str(v)


def markdown_table(rows: list[dict]) -> str:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def headline_text(report: dict) -> str:
  """The console table: encoders down, headline metrics across."""
  rows = report["headline"]
  cols = list(dict.fromkeys(k for r in rows for k in r if k != "encoder"))
  width = max(max(len(r["encoder"]) for r in rows), 15) + 2  # room for "0.123 ± 0.045"
  test = report["splits"].get("test", {}).get("subjects", [])
  out = [f"evaluation of checkpoint step {report['checkpoint_step']} ({report['family']})"
         f"{_present_at_eval(report)}, test subjects {', '.join(test)}"]
  for c in cols:
    out.append(f"  {c:<28}" + "".join(f"{_fmt(r.get(c, '-')) if c in r else '-':>{width}}"
                                      for r in rows))
  out.insert(1, f"  {'':<28}" + "".join(f"{r['encoder']:>{width}}" for r in rows))
  return "\n".join(out)


def _section(title: str, body: str) -> str:
  return f"\n## {title}\n\n{body}\n"


def _present_at_eval(report: dict) -> str:
  present = report.get("eval_modalities", report["modalities"])
  return "" if present == report["modalities"] else f" (at evaluation only {', '.join(present)})"


def markdown(report: dict, images: dict[str, str]) -> str:
  t = report["tasks"]
  md = [f"# Evaluation report — checkpoint step {report['checkpoint_step']} "
        f"({report['family']})\n",
        f"Modalities: {', '.join(report['modalities'])}"
        + _present_at_eval(report) + ". Choices (probe l2, thresholds, ridge alpha) on the val "
        "split; every number on the test split.\n"]
  md.append(_section("Headline", markdown_table(report["headline"])))
  md.append(_section("Splits (subject-disjoint)", markdown_table(
      [{"split": k, "subjects": len(v["subjects"]), "recordings": v["recordings"],
        "sites": ", ".join(v["sites"])} for k, v in report["splits"].items()])))
  if "staging" in t:
    rows = [{"encoder": e, "accuracy": r["accuracy"], "kappa": r["kappa"], "macro_f1": r["macro_f1"],
             **{f"F1 {k}": v for k, v in r["per_stage_f1"].items()}, "l2": r["l2"]}
            for e, r in t["staging"].items()]
    body = markdown_table(rows)
    for key in ("hypnogram", "confusion"):
      if key in images:
        body += f"\n\n![{key}]({images[key]})"
    md.append(_section("Staging (linear probe, all training labels)", body))
  if "sequence" in t:
    rows = [{"encoder": e, "accuracy": r["accuracy"], "kappa": r["kappa"], "macro_f1": r["macro_f1"],
             **{f"F1 {k}": v for k, v in r["per_stage_f1"].items()},
             "linear probe macro_f1": _get(t, "staging", e, "macro_f1") or "-",
             **({"macro_f1 over seeds": r["over_seeds"]["macro_f1"]} if "over_seeds" in r
                else {}),
             "best step": f"{r['best_step']}/{r['steps']}"} for e, r in t["sequence"].items()]
    md.append(_section("Night-level sequence head (frozen encoder, whole nights)",
                       "Dilated temporal convolutions + self-attention over each night's epoch "
                       "embeddings; early-stopped on val macro-F1 (per-stage columns: the first "
                       "seed).\n\n" + markdown_table(rows)))
  for name, title in (("few_shot", "Label efficiency (macro-F1, mean ± sd over seeds)"),):
    if name in t:
      rows = [{"encoder": e, **{f"{f} labels": c[f]["macro_f1"] for f in c}}
              for e, c in t[name].items()]
      body = markdown_table(rows) + (f"\n\n![curve]({images['label_curve']})"
                                     if "label_curve" in images else "")
      md.append(_section(title, body))
  if "site" in t:
    s = t["site"]
    if "skipped" in s:
      body = f"skipped: {s['skipped']}"
    else:
      rows = [{"encoder": e, **{f"{f} labels": c["macro_f1"] for f, c in s[e]["curve"].items()}}
              for e in report["encoders"] if e in s]
      body = (f"Probe trained on {', '.join(s['train_sites'])}, tested on "
              f"{', '.join(s['test_sites'])} (macro-F1).\n\n" + markdown_table(rows))
    md.append(_section("Cross-site staging", body))
  if "audit" in t:
    a = t["audit"]
    rows = [{"target": k, **{e: a[e][k]["balanced_accuracy"] for e in report["encoders"] if e in a},
             "chance": a[report["encoders"][0]][k]["chance"]} for k in a["targets"]]
    md.append(_section("Representation audit (balanced accuracy, linear probe)",
                       "Fitted on a random half of all epochs (every split), scored on the other "
                       "half.\n\n" + markdown_table(rows)))
  if "robustness" in t:
    r = t["robustness"]
    rows = [{"subset": sub, **{e: next(x["macro_f1"] for x in r[e] if x["subset"] == sub)
                               for e in report["encoders"] if e in r}} for sub in r["subsets"]]
    body = (f"{len(r['subsets'])} of {r['total_subsets']} non-empty modality subsets (macro-F1)."
            "\n\n" + markdown_table(rows))
    if "robustness" in images:
      body += f"\n\n![robustness]({images['robustness']})"
    md.append(_section("Any-subset robustness", body))
  if "events" in t:
    ev = t["events"]
    rows = [{"encoder": e, **{k: ev[e][k]["f1"] for k in ev["kinds"]}, "mean": ev[e]["mean_f1"]}
            for e in report["encoders"] if e in ev]
    md.append(_section(f"Event detection (event-level F1, IoU ≥ {ev['min_iou']})",
                       markdown_table(rows)))
  if "clinical" in t:
    rows = []
    for e, c in t["clinical"].items():
      rows.append({"encoder": e, "nights (train/test)": f"{c['train_nights']}/{c['test_nights']}",
                   "AHI MAE": c["ahi"]["mae"], "AHI Pearson": c["ahi"]["pearson"],
                   "AHI MAE (train mean)": c["ahi"]["baseline_mae"], "age MAE": c["age"]["mae"],
                   "age MAE (train mean)": c["age"]["baseline_mae"],
                   "sex AUROC": c["sex"].get("auroc", c["sex"].get("skipped"))})
    md.append(_section("Night-level clinical targets (pooled night embeddings)",
                       markdown_table(rows)))
  if "retrieval" in t and "skipped" not in t["retrieval"]:
    r = t["retrieval"]
    rows = [{"query->target": p, "encoder": e, **v} for e in report["encoders"] if e in r
            for p, v in r[e]["pairs"].items()]
    body = f"Pool of up to {r['pool']} test epochs per pair.\n\n" + markdown_table(rows)
    if "retrieval" in images:
      body += f"\n\n![retrieval]({images['retrieval']})"
    md.append(_section("Modality retrieval (R@k)", body))
  if "sleeplm" in t:
    md.append(sleeplm_markdown(report, images))
  if "search" in t and "skipped" not in t["search"]:
    r = t["search"]
    rows = [{"target": k, "prompt": r["prompts"][k],
             **{e: r[e]["prompt"].get(k) for e in report["encoders"] if e in r},
             **{f"{e} paraphrases": float(np.nanmean([v for n, v in r[e]["paraphrase"].items()
                                                      if n.startswith(k + "/")] or [np.nan]))
                for e in report["encoders"] if e in r}}
            for k in r["prompts"]]
    md.append(_section("Searching a night in words (AUROC of the similarity to the prompt)",
                       f"{r['split']} epochs; prompts and paraphrases: "
                       "`sleepjax/evaluate/search.py`.\n\n" + markdown_table(rows)))
  for name in ("yasa", "supervised", "finetune"):
    if name in t:
      v = t[name]
      body = (f"skipped: {v['skipped']}" if "skipped" in v else
              "```json\n" + json.dumps(v, indent=1, default=float)[:4000] + "\n```")
      md.append(_section(name, body))
  md.append(_section("Time per task (s)", markdown_table([report["seconds"]])))
  return "".join(md)


def sleeplm_markdown(report: dict, images: dict[str, str]) -> str:
  """Signal<->text retrieval per caption group, zero-shot staging, captioning scores, examples."""
  s = report["tasks"]["sleeplm"]
  if "skipped" in s:
    return _section("SleepLM", f"skipped: {s['skipped']}")
  encs = [e for e in report["encoders"] if e in s]
  rows = [{"group": g, "encoder": e, "direction": d, **v[d], "n": v["n"],
           "distinct": v["distinct_contents" if same else "distinct_texts"],
           "chance R@1": v["chance_R@1 same content" if same else "chance_R@1"],
           "content-oracle R@1": v.get("content_oracle_R@1", "") if d == "signal->text" else ""}
          for e in encs for g, v in s[e]["retrieval"]["groups"].items()
          for d in ("signal->text", "text->signal", "signal->text same content",
                    "text->signal same content") if d in v for same in [d.endswith("content")]]
  body = (f"Signal <-> text retrieval on a pool of up to {s['pool']} {s['split']} epochs per "
          "caption group (identical caption texts all count as right; `same content`: any "
          "caption saying the same in other words counts as right; `distinct`: texts, or "
          "contents; `content-oracle R@1`: the same-text R@1 of a model that knows each epoch's "
          "content but not the wording its caption was drawn in).\n\n"
          + markdown_table(rows))
  if "text_retrieval" in images:
    body += f"\n\n![text retrieval]({images['text_retrieval']})"
  rows = [{"encoder": e, **{k: s[e]["zero_shot"][k] for k in ("accuracy", "kappa", "macro_f1")},
           **{f"F1 {k}": v for k, v in s[e]["zero_shot"]["per_stage_f1"].items()},
           "majority-class accuracy": s[e]["zero_shot"]["chance_accuracy"]} for e in encs]
  body += ("\n\nZero-shot staging (each epoch against the stage prompts, no labels):\n\n"
           + markdown_table(rows))
  keys = ("captions", "bleu", "rouge_l", "numeric_faithfulness", "with_numbers",
          "reference_numeric_faithfulness")
  rows = [{"encoder": e, "group": g, **{k: c[k] for k in keys}} for e in encs
          for g, c in [("all", s[e]["captioning"]), *s[e]["captioning"]["groups"].items()]]
  body += (f"\n\nCaptioning (groups: {s['caption_group']}), against the reference captions and the "
           "epochs' features (numeric faithfulness: the fraction of stated numbers that agree "
           "with a feature at the caption's precision; `with_numbers`: captions stating any):"
           "\n\n" + markdown_table(rows))
  rows = []
  for e in encs:
    stated = s[e]["captioning"].get("stated_vs_true", {}).get("quantities", {})
    for name, r in s[e].get("readout", {}).items():
      q = stated.get(name, {})
      rows.append({"encoder": e, "quantity": name, "stated n": q.get("n", 0),
                   "stated exact": q.get("exact", ""), "stated MAE": q.get("mae", ""),
                   "constant MAE": q.get("constant_mae", ""), "stated r": q.get("r", ""),
                   "read-out R^2": r["r2"], "read-out MAE": r["mae"],
                   "read-out constant MAE": r["constant_mae"]})
  if rows:
    body += ("\n\nThe numbers, per quantity (`evaluate.numbers`, caption units): the generated "
             "captions' stated values against the epoch's (exact at the printed precision, mean "
             "absolute error beside the best constant's, r) and a ridge read-out of the quantity "
             "from the signal embedding (trained on the training epochs):\n\n"
             + markdown_table(rows))
  keys = ("epochs", "majority_class", "caption_names_stage", "caption_names_no_single_stage",
          "kl_different_stage", "kl_same_stage", "decoder_stage_rank", "decoder_stage_accuracy",
          "decoder_stage_macro_f1")
  rows = [{"encoder": e, **{k: s[e]["conditioning"][k] for k in keys}} for e in encs
          if "conditioning" in s[e]]
  if rows:
    body += ("\n\nDoes the decoder read the signal (`evaluate.conditioning`): generated "
             "stage_event captions naming the scored stage; KL of the next-token distributions "
             f"after \"{s[encs[0]]['conditioning']['prefix']}\" between epochs of different / the "
             "same stage (0: blind to the signal); the scored stage's rank (of 5) and accuracy "
             "when the decoder scores every stage sentence:\n\n" + markdown_table(rows))
  ex = [{"epoch": x["epoch"], "group": x["group"], "reference": x["reference"],
         "generated": x["generated"]} for x in s.get("examples", [])]
  if ex:
    body += f"\n\nExample captions ({encs[0]}):\n\n" + markdown_table(ex)
  if "captions" in images:
    body += f"\n\n![captions]({images['captions']})"
  return _section("SleepLM: text retrieval, zero-shot staging, captioning", body)


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def write(report: dict, out_dir: str) -> dict[str, str]:
  """report.json + report.md + PNGs in `out_dir`; returns {figure: file name}."""
  os.makedirs(out_dir, exist_ok=True)
  images = plots.write_all(report, out_dir)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(_jsonable({**report, "images": images}), f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report, images))
  return images
