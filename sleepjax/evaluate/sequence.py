"""Night-level sequence head for staging: frozen per-epoch embeddings of whole nights -> stages.

Each recording's segments are joined into one night (epochs placed by their epoch index; gaps and
padding masked). The head is a small bidirectional network over the night: an input projection
(plus the epoch's position in the night, as a fraction), residual dilated temporal convolutions
(local context, receptive field 1 + 2 * (2^layers - 1) epochs) and residual self-attention blocks
over the whole night (global context). It trains on the training split's nights with
class-balanced cross-entropy, is early-stopped on val macro-F1 and reports on test, for every
encoder, with the staging metric set. Identical on every process (tables are replicated).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sleepjax.evaluate import metrics, tasks as tasks_lib
from sleepjax.modalities import STAGES


def nights(table: dict) -> dict:
  """Whole nights from a segment table: x [N, T, D], stage [N, T] (-1 where no epoch), mask
  [N, T] (an epoch is there), length [N] (epochs from first to last) and recording [N]."""
  recs = np.unique(table["recording"])
  start = {r: table["epoch_index"][table["recording"] == r].min() for r in recs}
  length = {r: table["epoch_index"][table["recording"] == r].max() + 1 - start[r] for r in recs}
  N, T, D = len(recs), max(length.values()), table["epoch"].shape[-1]
  x = np.zeros((N, T, D), np.float32)
  y = np.full((N, T), -1, np.int64)
  mask = np.zeros((N, T), bool)
  night = np.searchsorted(recs, table["recording"])
  offset = table["epoch_index"] - np.array([start[r] for r in table["recording"]])[:, None]
  rows = np.broadcast_to(night[:, None], offset.shape)
  x[rows, offset] = table["epoch"]
  y[rows, offset] = table["stage"]
  mask[rows, offset] = True
  return {"x": x, "stage": y, "mask": mask, "length": np.array([length[r] for r in recs]),
          "recording": recs}


class _ConvBlock(nnx.Module):
  def __init__(self, width: int, dilation: int, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.conv = nnx.Conv(width, width, kernel_size=(3,), kernel_dilation=dilation, padding="SAME",
                         rngs=rngs)

  def __call__(self, h, mask):
    return h + jnp.where(mask[..., None], jax.nn.gelu(self.conv(self.norm(h))), 0.0)


class _AttentionBlock(nnx.Module):
  def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
    self.norm1, self.norm2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
    self.mlp1, self.mlp2 = nnx.Linear(width, 2 * width, rngs=rngs), nnx.Linear(2 * width, width,
                                                                               rngs=rngs)

  def __call__(self, h, mask):
    h = h + self.attn(self.norm1(h), mask=mask[:, None, None, :])  # keys: real epochs only
    return h + self.mlp2(jax.nn.gelu(self.mlp1(self.norm2(h))))


class SequenceHead(nnx.Module):
  """[N, T, D] standardised embeddings + [N, T] mask -> [N, T, classes] logits."""

  def __init__(self, d_in: int, n_classes: int, *, width: int, conv_layers: int,
               attention_layers: int, heads: int, rngs: nnx.Rngs):
    self.inp = nnx.Linear(d_in + 1, width, rngs=rngs)
    self.convs = nnx.List([_ConvBlock(width, 2 ** i, rngs) for i in range(conv_layers)])
    self.attns = nnx.List([_AttentionBlock(width, heads, rngs) for _ in range(attention_layers)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.out = nnx.Linear(width, n_classes, rngs=rngs)

  def __call__(self, x_NxTxD, mask_NxT, length_N):
    t = jnp.arange(x_NxTxD.shape[1])[None, :] / jnp.maximum(length_N[:, None], 1)
    h = self.inp(jnp.concatenate([x_NxTxD, t[..., None]], -1))
    h = jnp.where(mask_NxT[..., None], h, 0.0)  # gaps look like the zero padding convs see at edges
    for block in self.convs:
      h = block(h, mask_NxT)
    for block in self.attns:
      h = block(h, mask_NxT)
    return self.out(self.norm(h))


def fit(ctx, train: dict, val: dict | None, seed: int):
  """Trains a head on `train` nights (early stopping on `val` macro-F1 when it has labels);
  returns (predict(nights) -> stages [N, T], {"best_step", "val_macro_f1", "steps"})."""
  K = len(STAGES)
  real = train["x"][train["mask"]]
  mu, sd = real.mean(0), real.std(0) + 1e-6
  counts = np.bincount(train["stage"][train["stage"] >= 0], minlength=K)
  weight_Y = jnp.asarray(np.where(counts > 0, counts.sum() / (K * np.maximum(counts, 1)), 0.0))
  model = SequenceHead(train["x"].shape[-1], K, width=ctx.config.eval.sequence_width,
                       conv_layers=ctx.config.eval.sequence_conv_layers,
                       attention_layers=ctx.config.eval.sequence_attention_layers,
                       heads=ctx.config.eval.sequence_heads, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(ctx.config.eval.sequence_lr, weight_decay=ctx.config.eval.sequence_weight_decay)

  def norm(n):
    return np.where(n["mask"][..., None], (n["x"] - mu) / sd, 0.0).astype(np.float32)

  def loss_fn(params, x, y, mask, length):
    logits = nnx.merge(graphdef, params)(x, mask, length)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
    w = jnp.where(y >= 0, weight_Y[jnp.maximum(y, 0)], 0.0)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1e-6)

  @jax.jit
  def step(params, opt, x, y, mask, length):
    grads = jax.grad(loss_fn)(params, x, y, mask, length)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  @jax.jit
  def logits_of(params, x, mask, length):
    return nnx.merge(graphdef, params)(x, mask, length)

  def predict_with(params, n):
    return np.asarray(jnp.argmax(logits_of(params, norm(n), n["mask"], n["length"]), -1))

  x_tr = norm(train)
  B = min(ctx.config.eval.sequence_batch, len(x_tr))
  rng = np.random.default_rng([seed, 7])
  opt = tx.init(params)
  use_val = val is not None and (val["stage"] >= 0).any()
  best = (-np.inf, 0, params)
  history, stale = {}, 0
  steps, every = ctx.config.eval.sequence_steps, ctx.config.eval.sequence_eval_every
  order = np.zeros(0, np.int64)
  for i in range(1, steps + 1):
    if len(order) < B:  # epochs of nights: every night once before any twice
      order = np.concatenate([order, rng.permutation(len(x_tr))])
    idx, order = order[:B], order[B:]
    params, opt = step(params, opt, x_tr[idx], train["stage"][idx], train["mask"][idx],
                       train["length"][idx])
    if use_val and (i % every == 0 or i == steps):
      f1 = metrics.macro_f1(val["stage"], predict_with(params, val), K)
      history[i] = f1
      if f1 > best[0]:
        best, stale = (f1, i, params), 0
      elif (stale := stale + 1) >= ctx.config.eval.sequence_patience:
        break
  if not use_val:  # no val labels: the last parameters
    best = (float("nan"), i, params)
  chosen = best[2]
  return (lambda n: predict_with(chosen, n)), {"best_step": best[1], "steps": i,
                                               "val_macro_f1": history}


def sequence(ctx) -> dict:
  """Night-level sequence head on each encoder's frozen epoch embeddings (train: fit, val: early
  stopping, test: the staging metrics and one test night's hypnogram of the first seed; with
  several seeds, `over_seeds`: mean ± sd of macro-F1, kappa and accuracy)."""
  out = {}
  for enc in ctx.encoders:
    tabs = {s: ctx.table(enc, ctx.split(s)) for s in ("train", "val", "test")}
    tasks_lib.check_disjoint(tasks_lib.subjects(ctx, tabs["train"]),
                             tasks_lib.subjects(ctx, tabs["test"]), "sequence")
    n = {s: nights(t) for s, t in tabs.items() if t is not None}
    test, keep, runs = n["test"], n["test"]["mask"], []
    for seed in ctx.config.eval.sequence_seeds:
      predict, info = fit(ctx, n["train"], n.get("val"), seed)
      pred = predict(test)
      runs.append(({**metrics.staging(test["stage"][keep], pred[keep], STAGES), **info}, pred))
    (res, pred), first = runs[0], keep[0]
    out[enc] = {**res, "train_nights": len(n["train"]["x"]), "test_nights": len(test["x"]),
                "hypnogram": {"recording": ctx.recording_ids[int(test["recording"][0])],
                              "true": test["stage"][0][first].tolist(),
                              "pred": pred[0][first].tolist()}}
    if len(runs) > 1:
      out[enc]["over_seeds"] = {k: metrics.mean_sd([r[k] for r, _ in runs])
                                for k in ("macro_f1", "kappa", "accuracy")}
  return out


TASKS = {"sequence": sequence}
