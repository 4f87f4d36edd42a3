"""Evaluation tasks on frozen embeddings. Each task takes a `Context` (cached embedding tables per
encoder, split and modality subset) and returns a JSON-able dict; choices (regularisation,
thresholds) are made on the val split, numbers are reported on the test split.
"""

import itertools

import numpy as np

from sleepjax.evaluate import metrics, probes
from sleepjax.modalities import EVENTS, STAGES


class Context:
  """Embedding tables, computed once per (encoder, split, subset) by `embed_fn`."""

  def __init__(self, config, manifest: dict, modalities: list[str], encoders, embed_fn, *,
               mesh=None, embed_encoder=None, batches=None):
    """encoders: names, or {name: embed.Encoder} (needed by tasks that train through them);
    embed_fn(name, split, subset) -> table; embed_encoder(Encoder, split) -> table and
    batches(split) -> local batches serve those tasks."""
    self.config, self.manifest, self.modalities = config, manifest, list(modalities)
    self._objects = encoders if isinstance(encoders, dict) else {}
    self.encoders, self._embed, self._cache = list(encoders), embed_fn, {}
    self.mesh, self._embed_encoder, self._batches = mesh, embed_encoder, batches
    self.recording_ids = sorted(manifest["recordings"])
    self.artifacts = {}  # things tasks leave for the caller beyond the report (staging heads)

  def encoder(self, name: str):
    return self._objects[name]

  def embed_with(self, encoder, split: str) -> dict:
    return self._embed_encoder(encoder, split)

  def batches(self, split: str) -> list[dict]:
    if ("batches", split) not in self._cache:
      self._cache[("batches", split)] = self._batches(split)
    return self._cache[("batches", split)]

  def site_sides(self):
    """(training sites, test sites) of the cross-site tasks; (None, None) with one site."""
    sites = list(self.manifest["sites"])
    train = list(self.opt("train_sites")) or sites[:1]
    test = list(self.opt("test_sites")) or [s for s in sites if s not in train]
    if set(train) & set(test):
      raise ValueError(f"site task: sites {sorted(set(train) & set(test))} on both sides")
    return (train, test) if test else (None, None)

  def shown(self) -> list[str]:
    """The modalities the encoders are shown: `eval.modalities` (else all), in model order."""
    return [m for m in self.modalities if m in self.opt("modalities")] or self.modalities

  def opt(self, key):
    return self.config.eval[key]

  def table(self, encoder: str, split: str, subset=None) -> dict:
    key = (encoder, split, None if subset is None else tuple(sorted(subset)))
    if key not in self._cache:
      self._cache[key] = self._embed(encoder, split, subset)
    return self._cache[key]

  def split(self, name: str) -> str:
    return self.opt(f"{name}_split")


# ------------------------------------------------------------------------------------ helpers
def epochs(table: dict, rows=None) -> tuple[np.ndarray, np.ndarray]:
  """Flatten a table's segments into epochs: x [N, D], stage [N] (rows: a segment mask)."""
  if table is None:  # an empty split
    return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
  x, y = table["epoch"], table["stage"]
  if rows is not None:
    x, y = x[rows], y[rows]
  return x.reshape(-1, x.shape[-1]).astype(np.float32), y.reshape(-1).astype(np.int64)


def _probe(ctx, x, y, l2, seed=0):
  return probes.fit_linear_probe(x, y, len(STAGES), steps=ctx.opt("probe_steps"),
                                 lr=ctx.opt("probe_lr"), l2=l2, seed=seed)


def choose_l2(ctx, x_train, y_train, x_val, y_val):
  """The probe l2 with the best val macro-F1 (the configured probe_l2 when val has no labels)."""
  grid = list(ctx.opt("probe_l2_grid")) or [ctx.opt("probe_l2")]
  if len(grid) == 1 or not (y_val >= 0).any():
    return ctx.opt("probe_l2"), {}
  return probes.choose(grid, lambda l2: metrics.macro_f1(
      y_val, _probe(ctx, x_train, y_train, l2)(x_val), len(STAGES)))


def _site_rows(ctx, table, sites) -> np.ndarray:
  names = ctx.manifest["sites"]
  return np.isin(np.asarray([names[s] for s in table["site"]]), list(sites))


def subjects(ctx, table, rows=None) -> set[str]:
  rec = table["recording"] if rows is None else table["recording"][rows]
  return {ctx.manifest["recordings"][ctx.recording_ids[r]]["subject"] for r in np.unique(rec)}


def check_disjoint(train_subjects: set, test_subjects: set, what: str):
  if overlap := set(train_subjects) & set(test_subjects):
    raise ValueError(f"{what}: subjects {sorted(overlap)} are on both sides of the split")


def label_curve(ctx, x_train, y_train, x_test, y_test, l2) -> dict:
  """Probe metrics at each label fraction over seeds (mean and sd of macro-F1, kappa, accuracy)."""
  out = {}
  for fraction in ctx.opt("fractions"):
    runs = []
    for seed in ctx.opt("seeds"):
      idx = probes.label_fraction(y_train, fraction, seed, len(STAGES))
      pred = _probe(ctx, x_train[idx], y_train[idx], l2, seed)(x_test)
      runs.append({"macro_f1": metrics.macro_f1(y_test, pred, len(STAGES)),
                   "kappa": metrics.cohen_kappa(y_test, pred, len(STAGES)),
                   "accuracy": metrics.accuracy(y_test, pred), "labelled_epochs": len(idx)})
      if fraction == 1.0:
        break  # all labels: the seed only moves the init, one run says it
    out[str(fraction)] = {k: metrics.mean_sd([r[k] for r in runs])
                          for k in ("macro_f1", "kappa", "accuracy", "labelled_epochs")}
  return out


# -------------------------------------------------------------------------------------- tasks
def staging(ctx) -> dict:
  """Linear probe on all training epochs; l2 chosen on val; test metrics and one test night."""
  out = {}
  for enc in ctx.encoders:
    x_tr, y_tr = epochs(ctx.table(enc, ctx.split("train")))
    x_va, y_va = epochs(ctx.table(enc, ctx.split("val")))
    test = ctx.table(enc, ctx.split("test"))
    x_te, y_te = epochs(test)
    l2, scores = choose_l2(ctx, x_tr, y_tr, x_va, y_va)
    probe = _probe(ctx, x_tr, y_tr, l2)
    ctx.artifacts[f"staging_head/{enc}"] = probe.head
    pred = probe(x_te)
    night = test["recording"] == test["recording"][0]
    out[enc] = {**metrics.staging(y_te, pred, STAGES), "l2": l2, "val_macro_f1": scores,
                "train_epochs": int((y_tr >= 0).sum()),
                "hypnogram": {"recording": ctx.recording_ids[int(test["recording"][0])],
                              "true": test["stage"][night].reshape(-1).tolist(),
                              "pred": pred.reshape(test["stage"].shape)[night].reshape(-1).tolist()}}
    check_disjoint(subjects(ctx, ctx.table(enc, ctx.split("train"))), subjects(ctx, test),
                   "staging")
  return out


def few_shot(ctx) -> dict:
  """Label efficiency: probes on a fraction of the training epochs, several seeds each."""
  out = {}
  for enc in ctx.encoders:
    x_tr, y_tr = epochs(ctx.table(enc, ctx.split("train")))
    x_va, y_va = epochs(ctx.table(enc, ctx.split("val")))
    x_te, y_te = epochs(ctx.table(enc, ctx.split("test")))
    l2, _ = choose_l2(ctx, x_tr, y_tr, x_va, y_va)
    out[enc] = label_curve(ctx, x_tr, y_tr, x_te, y_te, l2)
  return out


def site(ctx) -> dict:
  """Train the probe on training subjects of some sites, test on test subjects of the others."""
  train_sites, test_sites = ctx.site_sides()
  if train_sites is None:
    return {"skipped": "one site only"}
  out = {"train_sites": train_sites, "test_sites": test_sites}
  for enc in ctx.encoders:
    train, test = ctx.table(enc, ctx.split("train")), ctx.table(enc, ctx.split("test"))
    val = ctx.table(enc, ctx.split("val"))
    r_tr, r_te = _site_rows(ctx, train, train_sites), _site_rows(ctx, test, test_sites)
    r_va = None if val is None else _site_rows(ctx, val, train_sites)
    if not r_tr.any() or not r_te.any():
      return {**out, "skipped": "no training rows from the training sites or no test rows from "
                                "the test sites"}
    check_disjoint(subjects(ctx, train, r_tr), subjects(ctx, test, r_te), "site split")
    x_tr, y_tr = epochs(train, r_tr)
    x_va, y_va = epochs(val, r_va)
    x_te, y_te = epochs(test, r_te)
    l2, _ = choose_l2(ctx, x_tr, y_tr, x_va, y_va)
    out[enc] = {"curve": label_curve(ctx, x_tr, y_tr, x_te, y_te, l2),
                "train_subjects": sorted(subjects(ctx, train, r_tr)),
                "test_subjects": sorted(subjects(ctx, test, r_te))}
  return out


def subsets(modalities: list[str], cap: int, seed: int) -> list[tuple[str, ...]]:
  """Every non-empty subset (2^k - 1) when that is at most `cap`; otherwise the full set, every
  single modality (as many as the cap allows) and a seeded sample of the rest up to `cap`, ordered
  by size."""
  every = [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]
  if len(every) <= cap:
    return every
  must = ([tuple(modalities)] + [(m,) for m in modalities])[:max(cap, 1)]
  rest = [c for c in every if c not in must]
  pick = np.random.default_rng(seed).choice(len(rest), size=max(cap - len(must), 0), replace=False)
  return sorted(must + [rest[i] for i in pick], key=lambda c: (len(c), c))


def robustness(ctx) -> dict:
  """Staging from every (or a sampled set of) non-empty modality subset(s): probe trained and
  tested with only that subset present."""
  names = ctx.shown()
  chosen = subsets(names, ctx.opt("robustness_max_subsets"), ctx.opt("robustness_seed"))
  out = {"modalities": names, "subsets": ["+".join(c) for c in chosen],
         "total_subsets": 2 ** len(names) - 1}
  for enc in ctx.encoders:
    rows = []
    for c in chosen:
      x_tr, y_tr = epochs(ctx.table(enc, ctx.split("train"), c))
      x_te, y_te = epochs(ctx.table(enc, ctx.split("test"), c))
      pred = _probe(ctx, x_tr, y_tr, ctx.opt("probe_l2"))(x_te)
      rows.append({"subset": "+".join(c), "macro_f1": metrics.macro_f1(y_te, pred, len(STAGES)),
                   "kappa": metrics.cohen_kappa(y_te, pred, len(STAGES))})
    out[enc] = rows
  return out


def _event_targets(table: dict, kind: str) -> np.ndarray:
  """[N epochs, 30] booleans: the per-second raster bit of `kind`."""
  bit = EVENTS.index(kind)
  ev = table["events"].reshape(-1, table["events"].shape[-1]).astype(np.int64)
  return (ev >> bit) & 1 == 1


def _with_neighbours(table: dict) -> np.ndarray:
  """Each epoch's embedding next to its neighbours' (zeros at segment edges): events straddle
  epoch boundaries."""
  x = table["epoch"].astype(np.float32)
  pad = np.zeros_like(x[:, :1])
  before = np.concatenate([pad, x[:, :-1]], 1)
  after = np.concatenate([x[:, 1:], pad], 1)
  x = np.concatenate([before, x, after], -1)
  return x.reshape(-1, x.shape[-1])


def night_rasters(table: dict, flags_per_second: np.ndarray) -> np.ndarray:
  """Per-second rasters of all rows joined in table order, one False second between recordings."""
  per_row = flags_per_second.reshape(len(table["recording"]), -1)
  pieces = []
  for i, row in enumerate(per_row):
    if i and table["recording"][i] != table["recording"][i - 1]:
      pieces.append(np.zeros(1, bool))
    pieces.append(row.astype(bool))
  return np.concatenate(pieces)


def events(ctx) -> dict:
  """Per-second event detection: a sigmoid head per second and event kind on each epoch's
  embedding and its neighbours'; the threshold per kind chosen on val event-F1; test event-F1."""
  kinds = list(ctx.opt("event_kinds"))
  out = {"kinds": kinds, "min_iou": ctx.opt("event_min_iou")}
  for enc in ctx.encoders:
    tabs = {s: ctx.table(enc, ctx.split(s)) for s in ("train", "val", "test")}
    y = {s: np.concatenate([_event_targets(t, k) for k in kinds], 1) for s, t in tabs.items()
         if t is not None}
    score = probes.fit_sigmoid_probe(_with_neighbours(tabs["train"]), y["train"],
                                     steps=ctx.opt("probe_steps"), lr=ctx.opt("probe_lr"),
                                     l2=ctx.opt("probe_l2"))
    p = {s: score(_with_neighbours(tabs[s])) for s in ("val", "test") if tabs[s] is not None}
    res = {}
    for i, kind in enumerate(kinds):
      cols = slice(30 * i, 30 * (i + 1))

      def f1(threshold, s, cols=cols):
        return metrics.event_f1(night_rasters(tabs[s], y[s][:, cols]),
                                night_rasters(tabs[s], p[s][:, cols] >= threshold),
                                min_iou=ctx.opt("event_min_iou"))
      threshold = 0.5  # without a val split
      if "val" in p:
        threshold, _ = probes.choose(list(ctx.opt("event_thresholds")),
                                     lambda t: f1(t, "val")["f1"])
      res[kind] = {**f1(threshold, "test"), "threshold": threshold}
    res["mean_f1"] = float(np.mean([res[k]["f1"] for k in kinds]))
    out[enc] = res
  return out


def night_table(ctx, table: dict) -> dict:
  """Night-level rows: the mean epoch embedding of each recording, its age, sex and scored AHI."""
  recs = np.unique(table["recording"])
  x = np.stack([table["epoch"][table["recording"] == r].reshape(-1, table["epoch"].shape[-1])
                .mean(0) for r in recs])
  first = np.array([np.flatnonzero(table["recording"] == r)[0] for r in recs])
  ahi = [ctx.manifest["recordings"][ctx.recording_ids[r]].get("night_summary", {}).get("ahi")
         for r in recs]
  return {"x": x.astype(np.float64), "age": table["age"][first].astype(np.float64),
          "sex": table["sex"][first].astype(np.int64),
          "ahi": np.array([np.nan if a is None else a for a in ahi], np.float64),
          "recordings": [ctx.recording_ids[r] for r in recs]}


def clinical(ctx) -> dict:
  """Night-level targets from pooled night embeddings: AHI (MAE, Pearson), age (MAE) by ridge
  regression (alpha on val MAE), sex (AUROC) by a logistic probe."""
  out = {}
  for enc in ctx.encoders:
    n = {s: night_table(ctx, t) for s in ("train", "val", "test")
         if (t := ctx.table(enc, ctx.split(s))) is not None}
    res = {"train_nights": len(n["train"]["x"]), "test_nights": len(n["test"]["x"])}
    for target in ("ahi", "age"):
      def val_mae(alpha, target=target):
        fit = probes.fit_ridge(n["train"]["x"], n["train"][target], alpha)
        return -metrics.mae(n["val"][target], fit(n["val"]["x"]))
      alphas = list(ctx.opt("ridge_alphas"))
      alpha = (probes.choose(alphas, val_mae)[0] if "val" in n and np.isfinite(n["val"][target]).any()
               else alphas[len(alphas) // 2])  # without a val split: the middle of the grid
      pred = probes.fit_ridge(n["train"]["x"], n["train"][target], alpha)(n["test"]["x"])
      res[target] = {"mae": metrics.mae(n["test"][target], pred),
                     "pearson": metrics.pearson(n["test"][target], pred), "alpha": alpha,
                     "baseline_mae": metrics.mae(n["test"][target],
                                                 np.full(len(pred), np.nanmean(n["train"][target])))}
    if len(set(n["train"]["sex"][n["train"]["sex"] >= 0].tolist())) == 2:
      clf = probes.fit_linear_probe(n["train"]["x"], n["train"]["sex"], 2,
                                    steps=ctx.opt("probe_steps"), lr=ctx.opt("probe_lr"),
                                    l2=ctx.opt("probe_l2"))
      res["sex"] = {"auroc": metrics.auroc(n["test"]["sex"], clf.proba(n["test"]["x"])[:, 1])}
    else:
      res["sex"] = {"skipped": "training nights of one sex only"}
    out[enc] = res
  return out


def retrieval(ctx) -> dict:
  """Modality <-> modality retrieval on test epochs where both are present: cosine similarity of
  the contrastive projections (per-modality embeddings if the family has none), R@k both ways."""
  out = {"pool": ctx.opt("retrieval_pool")}
  for enc in ctx.encoders:
    t = ctx.table(enc, ctx.split("test"))
    emb = t.get("z", t.get("per_modality"))
    if emb is None:
      return {"skipped": "the family returns no per-modality embeddings"}
    M = emb.shape[1]
    emb = emb.transpose(0, 2, 1, 3).reshape(-1, M, emb.shape[-1])
    present = t["present"].transpose(0, 2, 1).reshape(-1, M)
    rng = np.random.default_rng(0)
    pairs = {}
    for a, b in itertools.combinations(range(M), 2):
      rows = np.flatnonzero(present[:, a] & present[:, b])
      if len(rows) < 2:
        continue
      rows = rng.choice(rows, size=min(len(rows), ctx.opt("retrieval_pool")), replace=False)
      r = metrics.retrieval(emb[rows, a], emb[rows, b], ctx.opt("retrieval_ks"))
      pairs[f"{ctx.modalities[a]}->{ctx.modalities[b]}"] = {**r["a_to_b"], "n": r["n"]}
      pairs[f"{ctx.modalities[b]}->{ctx.modalities[a]}"] = {**r["b_to_a"], "n": r["n"]}
    mean = {f"R@{k}": float(np.mean([p[f"R@{k}"] for p in pairs.values()]))
            for k in ctx.opt("retrieval_ks")} if pairs else {}
    out[enc] = {"pairs": pairs, "mean": mean}
  return out


TASKS = {"staging": staging, "few_shot": few_shot, "site": site, "robustness": robustness,
         "events": events, "clinical": clinical, "retrieval": retrieval}
