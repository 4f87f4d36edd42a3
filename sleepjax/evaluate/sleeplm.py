"""SleepLM tasks from the checkpoint alone, for every encoder (pretrained and random-init):

- signal <-> text retrieval, R@k both ways, per caption group, in a seeded pool of test epochs
  (cosine of the unit contrastive embeddings; identical caption texts all count as right);
- zero-shot staging: each test epoch's signal embedding against the stage prompts' (no labels);
- captioning of test epochs (whole segments, spread over the nights) scored against the reference
  captions (sentence BLEU, ROUGE-L) and against the epoch's own features (numeric faithfulness:
  the fraction of stated numbers that agree with a feature at the caption's precision), and per
  quantity how far the stated numbers are from the epoch's and whether the signal embedding carries
  the quantity at all (`evaluate.numbers`);
- whether the decoder reads the signal at all (`evaluate.conditioning`: the dependence of its
  next-token distribution on the epoch, the stage it scores and the stage its captions name).

The reference captions themselves are scored for numeric faithfulness too: 1.0 says the measure
reads the features the captions were written from.
"""

import os

import grain
import jax
import numpy as np
from flax import nnx

from sleepjax import records, sharding
from sleepjax.data.manifest import shard_paths
from sleepjax.evaluate import conditioning, metrics, numbers
from sleepjax.modalities import STAGES
from sleepjax.models.sleeplm.decode import caption_epochs
from sleepjax.objectives.sleeplm import l2_normalize


def host_model(ctx, encoder):
  """The encoder's model with host parameters (gathered to every process first: any sharding)."""
  params = encoder.params
  if ctx.mesh is not None:
    with jax.set_mesh(ctx.mesh):
      params = jax.jit(lambda p: p, out_shardings=sharding.replicated(ctx.mesh))(params)
  return nnx.merge(encoder.graphdef, jax.device_get(params))


def _segments(manifest: dict, split: str, keep=None):
  """(recording id, first epoch, arrays) of the split's records; `keep(rid, first)` filters before
  copying arrays (None: captions and features only)."""
  for blob in grain.sources.ArrayRecordDataSource(shard_paths(manifest, split)):
    arrays, meta = records.decode(blob)
    rid, first = meta["recording_id"], int(meta["first_epoch"])
    if keep is None:
      yield rid, first, {"captions": records.texts(arrays["captions"]),
                         "features": np.array(arrays["features"])}
    elif keep(rid, first):
      yield rid, first, {k: np.array(v) for k, v in arrays.items() if k != "captions"}


def references(manifest: dict, split: str) -> tuple[dict, list]:
  """({(recording id, epoch index): ({group: reference caption}, features [F])}, the segments as
  (recording id, first epoch, epochs))."""
  out, segments = {}, []
  for rid, first, a in _segments(manifest, split):
    segments.append((rid, first, len(a["features"])))
    for i, row in enumerate(a["features"]):
      out[(rid, first + i)] = ({g: texts[i] for g, texts in a["captions"].items()}, row)
  return out, segments


def feature_truths(manifest: dict, row: np.ndarray) -> list[float]:
  """The values a caption may state for an epoch: each feature times its caption scale (signed and
  absolute: trends are stated as "falls by 1.2")."""
  from data_prep.captions import FORMATS  # pylint: disable=g-import-not-at-top
  out = []
  for name, v in zip(manifest["features"]["names"], row):
    if name in FORMATS and np.isfinite(v):
      out += [float(v) * FORMATS[name][1], abs(float(v)) * FORMATS[name][1]]
  return out


def _rows(ctx, table, refs) -> dict:
  """Per test epoch of the table: signal embedding, stage, whether any channel is present, and its
  reference captions."""
  W = table["stage"].shape[1]
  rids = [ctx.recording_ids[r] for r in np.repeat(table["recording"], W)]
  epochs = table["epoch_index"].reshape(-1)
  return {"signal": table["signal"].reshape(-1, table["signal"].shape[-1]),
          "features": table["features"].reshape(-1, table["features"].shape[-1]),
          "stage": table["stage"].reshape(-1), "present": table["present"].reshape(-1),
          "captions": [refs[(r, int(e))][0] for r, e in zip(rids, epochs)]}


def stage_prompts() -> dict[int, tuple[str, ...]]:
  """Stage code -> prompts in the caption language (the stage_event captions' own sentences)."""
  from data_prep.captions import STAGE_TEMPLATES  # pylint: disable=g-import-not-at-top
  return dict(STAGE_TEMPLATES)


@nnx.jit  # at module level: traced once per shape, not once per call
def _text_latent(model, ids, mask):
  return model.encode_text(ids, mask)["latent"]


def text_embeddings(model, tokenizer, texts, max_len: int) -> np.ndarray:
  """Unit text embeddings [len(texts), P]."""
  ids, mask = tokenizer.encode(list(texts), max_len)
  latent = _text_latent(model, ids, mask)
  return np.asarray(l2_normalize(latent))


def stage_classifier(model, tokenizer, max_len: int) -> np.ndarray:
  """[stages, P]: per stage the normalised mean of its prompts' unit embeddings."""
  prompts = stage_prompts()
  stages = sorted(prompts)
  texts = [t for k in stages for t in prompts[k]]
  owner = np.array([k for k in stages for _ in prompts[k]])
  unit = text_embeddings(model, tokenizer, texts, max_len)  # one call: one compilation
  rows = np.stack([unit[owner == k].mean(0) for k in stages])
  return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def zero_shot_stage(signal_NxP: np.ndarray, classifier_YxP: np.ndarray) -> np.ndarray:
  """Predicted stage per epoch: argmax cosine similarity against the stage prompts."""
  return np.argmax(np.asarray(signal_NxP) @ classifier_YxP.T, -1)


def text_retrieval(ctx, model, tokenizer, rows) -> dict:
  """R@k signal->text and text->signal for each caption group with something to say: right is the
  same text, and (`... same content`) any caption saying what the epoch's own says in other words
  (`data_prep.captions.content`: the paraphrase a caption was written in is a seeded draw, which
  no signal can tell)."""
  from data_prep.captions import content  # pylint: disable=g-import-not-at-top
  ks, out = tuple(ctx.opt("retrieval_ks")), {}
  for g in rows["captions"][0]:
    ok = np.flatnonzero(rows["present"] & np.array([bool(c[g]) for c in rows["captions"]]))
    if len(ok) < 2:
      continue
    pick = np.random.default_rng(0).choice(ok, size=min(len(ok), ctx.opt("retrieval_pool")),
                                           replace=False)
    texts = [rows["captions"][i][g] for i in pick]
    unique = sorted(set(texts))
    emb = text_embeddings(model, tokenizer, unique, int(ctx.config.data.caption_len))
    txt = emb[[unique.index(t) for t in texts]]
    sim = rows["signal"][pick] @ txt.T
    same = np.array(texts)[:, None] == np.array(texts)[None, :]
    said = np.array([content(rows["features"][i], g) for i in pick])
    alike = said[:, None] == said[None, :]
    out[g] = {"signal->text": metrics.recall_at_k_sets(sim, same, ks),
              "text->signal": metrics.recall_at_k_sets(sim.T, same.T, ks),
              "signal->text same content": metrics.recall_at_k_sets(sim, alike, ks),
              "text->signal same content": metrics.recall_at_k_sets(sim.T, alike.T, ks),
              "n": len(pick), "distinct_texts": len(unique), "distinct_contents": len(set(said)),
              "chance_R@1": float(same.mean()),  # a random pick's chance of a right candidate
              "chance_R@1 same content": float(alike.mean()),
              # same-text R@1 of a model that knows each epoch's content but not its wording
              "content_oracle_R@1": float((same.sum(1) / alike.sum(1)).mean())}
  mean = {f"{d} R@{k}": float(np.mean([v[d][f"R@{k}"] for v in out.values()]))
          for d in ("signal->text", "text->signal", "signal->text same content",
                    "text->signal same content") for k in ks} if out else {}
  return {"groups": out, "mean": mean}


def zero_shot(model, tokenizer, rows, caption_len: int) -> dict:
  keep = rows["present"]
  y = rows["stage"][keep]
  pred = zero_shot_stage(rows["signal"][keep],
                                stage_classifier(model, tokenizer, caption_len))
  scored = y[y >= 0]
  return {**metrics.staging(y, pred, STAGES),
          "chance_accuracy": float(np.bincount(scored, minlength=len(STAGES)).max()
                                   / max(len(scored), 1))}


def caption_segments(segments: list, n_epochs: int) -> set:
  """(recording, first epoch) of the segments to caption: evenly spaced over all the split's
  segments in (recording, time) order, so they cover every night and all of each night, until
  `n_epochs` epochs."""
  ordered = sorted(segments)
  mean_len = np.mean([s[2] for s in ordered])
  k = min(len(ordered), max(1, int(np.ceil(n_epochs / mean_len))))
  picks = np.unique(np.linspace(0, len(ordered) - 1, k).round().astype(int))
  return {ordered[i][:2] for i in picks}


_SCORES = ("bleu", "rouge_l", "numeric_faithfulness", "reference_numeric_faithfulness")


def _summary(rows: list[dict]) -> dict:
  """Mean scores over captions (numeric faithfulness over those stating a number)."""
  out = {"captions": len(rows)}
  for key in _SCORES:
    v = [r[key] for r in rows if not np.isnan(r[key])]
    out[key] = float(np.mean(v)) if v else float("nan")
  out["with_numbers"] = (float(np.mean([not np.isnan(r["numeric_faithfulness"]) for r in rows]))
                         if rows else 0.0)
  return out


def captioning(ctx, model, tokenizer, refs, signals) -> dict:
  """Generated captions of the chosen segments against their references and features, over all
  captions and per group."""
  rows = []
  for (rid, first), (sig, mask) in sorted(signals.items()):
    n = len(next(iter(mask.values())))  # one segment: one continuous window
    gen = caption_epochs(model, tokenizer, sig, mask, ctx.config.eval.caption_eval_group,
                         max_len=int(ctx.config.eval.max_caption_len),
                         beams=int(ctx.config.eval.beams), chunk=n)
    for i, per_group in enumerate(gen):
      captions, features = refs[(rid, first + i)]
      truths = feature_truths(ctx.manifest, features)
      for g, text in per_group.items():
        if captions[g]:  # the reference says something
          rows.append({"features": features, "epoch": f"{rid}:{first + i}", "group": g,
                       "reference": captions[g], "generated": text,
                       "bleu": metrics.bleu(text, [captions[g]]),
                       "rouge_l": metrics.rouge_l(text, captions[g]),
                       "numeric_faithfulness": metrics.numeric_faithfulness(text, truths),
                       "reference_numeric_faithfulness":
                           metrics.numeric_faithfulness(captions[g], truths)})
  groups = list(dict.fromkeys(r["group"] for r in rows))
  n = ctx.config.eval.caption_examples
  examples = rows[::max(1, len(rows) // max(n, 1))][:n]  # spread over the captioned epochs
  return {**_summary(rows), "groups": {g: _summary([r for r in rows if r["group"] == g])
                                       for g in groups},
          "stated_vs_true": numbers.stated_vs_true([(r["group"], r["generated"], r["features"])
                                                    for r in rows]),
          "examples": [{k: r[k] for k in ("epoch", "group", "reference", "generated")}
                       for r in examples]}


def sleeplm(ctx) -> dict:
  """Text retrieval, zero-shot staging and captioning for each encoder of a SleepLM checkpoint."""
  if ctx.config.model.family != "sleeplm":
    return {"skipped": "not a SleepLM checkpoint"}
  from sleepjax.caption_tokenizer import CaptionTokenizer  # pylint: disable=g-import-not-at-top
  split = ctx.split("test")
  tokenizer = CaptionTokenizer(os.path.join(ctx.manifest["dir"], ctx.manifest["tokenizer"]["path"]))
  refs, segments = references(ctx.manifest, split)
  chosen = caption_segments(segments, int(ctx.config.eval.caption_eval_epochs))
  probed = caption_segments(segments, int(ctx.config.eval.conditioning_epochs))
  signals, probe = {}, []
  for rid, first, a in _segments(ctx.manifest, split,
                                 keep=lambda r, f: (r, f) in chosen | probed):
    names = [m for m in ctx.modalities if f"sig/{m}" in a]
    pair = ({m: a[f"sig/{m}"] for m in names}, {m: a[f"mask/{m}"] for m in names})
    if (rid, first) in chosen:
      signals[(rid, first)] = pair
    if (rid, first) in probed:
      probe.append((*pair, a["stage"], [refs[(rid, first + i)][0]["stage_event"]
                                        for i in range(len(a["stage"]))]))
  out = {"split": split, "caption_group": ctx.config.eval.caption_eval_group,
         "pool": ctx.opt("retrieval_pool")}
  for enc in ctx.encoders:
    model = host_model(ctx, ctx.encoder(enc))
    rows = _rows(ctx, ctx.table(enc, split), refs)
    out[enc] = {"retrieval": text_retrieval(ctx, model, tokenizer, rows),
                "zero_shot": zero_shot(model, tokenizer, rows, int(ctx.config.data.caption_len)),
                "captioning": captioning(ctx, model, tokenizer, refs, signals),
                "readout": numbers.readout(ctx.table(enc, ctx.split("train")),
                                           ctx.table(enc, split),
                                           ctx.manifest["features"]["names"]),
                "conditioning": conditioning.conditioning(
                    model, tokenizer, probe, int(ctx.config.eval.max_caption_len))}
  out["examples"] = out[ctx.encoders[0]]["captioning"]["examples"]
  return out


TASKS = {"sleeplm": sleeplm}
