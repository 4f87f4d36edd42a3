"""Are the numbers a SleepLM caption states the epoch's own? Two measures per quantity (a feature of
`data_prep.features` that captions print, in the caption's units: "%" for band powers, bpm, ...):

- stated vs true: each number a generated caption states about a quantity the epoch has
  (`data_prep.captions.stated_numbers`, which matches every paraphrase of every statement the
  epoch's features support), against the epoch's value: exact at the caption's precision (what
  numeric faithfulness counts), the absolute error, and beside it the absolute error of the best
  constant (the median true value over the same epochs: the best a decoder that ignores the signal
  and states one typical value can do); r between stated and true over the epochs.
- read-out: a ridge regression from the signal embedding of the training epochs to each quantity,
  scored on the test epochs (R^2, absolute error beside the training mean's): whether the encoder's
  summary of the epoch carries the quantity at all.

Numeric faithfulness asks for the value at the printed precision ("61 bpm" is right only for
60.5-61.5); these say how far from it the stated numbers are, and whether they follow the epoch or
a prior.
"""

import numpy as np

from sleepjax.evaluate import metrics

_MIN_N = 5  # epochs a quantity needs before its error and r are reported


def _r(a: np.ndarray, b: np.ndarray) -> float:
  if len(a) < 3 or a.std() == 0 or b.std() == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def stated_vs_true(items) -> dict:
  """items: (group, generated caption, the epoch's feature row). Per quantity: n, exact, mae,
  constant_mae, r; overall: the numbers stated, the fraction about a quantity the epoch has
  (`matched`), and over those the exact fraction and the quantities that beat the constant."""
  from data_prep.captions import stated_numbers  # pylint: disable=g-import-not-at-top
  per, stated = {}, 0
  for group, text, row in items:
    stated += len(metrics.NUMBER.findall(text))
    for name, value, truth, decimals in stated_numbers(text, row, group):
      per.setdefault(name, []).append((value, truth, decimals))
  quantities = {}
  for name, triples in sorted(per.items()):
    v, t, d = (np.array(x, float) for x in zip(*triples))
    exact = np.abs(np.round(t * 10.0**d) - np.round(v * 10.0**d)) < 0.5
    q = {"n": len(v), "exact": float(exact.mean())}
    if len(v) >= _MIN_N:
      q.update(mae=float(np.abs(v - t).mean()), constant_mae=float(np.abs(np.median(t) - t).mean()),
               r=_r(v, t))
    quantities[name] = q
  matched = sum(q["n"] for q in quantities.values())
  scored = [q for q in quantities.values() if "mae" in q]
  return {"numbers": stated, "matched": matched / stated if stated else float("nan"),
          "exact": (sum(q["exact"] * q["n"] for q in quantities.values()) / matched
                    if matched else float("nan")),
          "beat_constant": (f"{sum(q['mae'] < q['constant_mae'] for q in scored)}/{len(scored)}"),
          "quantities": quantities}


def _ridge(x_tr, y_tr, x_te, l2: float):
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
  a, b = (x_tr - mu) / sd, (x_te - mu) / sd
  w = np.linalg.solve(a.T @ a + l2 * len(a) * np.eye(a.shape[1]), a.T @ (y_tr - y_tr.mean()))
  return b @ w + y_tr.mean()


def readout(train: dict, test: dict, feature_names, l2: float = 1e-3) -> dict:
  """Ridge read-out of each caption quantity from the signal embedding: train and test are
  embedding tables (`signal` [N, W, P], `features` [N, W, F], `present` [N, W])."""
  from data_prep.captions import EPOCH_QUANTITIES, FORMATS  # pylint: disable=g-import-not-at-top

  def flat(t):
    keep = t["present"].reshape(-1)
    return (t["signal"].reshape(-1, t["signal"].shape[-1])[keep],
            t["features"].reshape(-1, t["features"].shape[-1])[keep])

  (x_tr, f_tr), (x_te, f_te) = flat(train), flat(test)
  out = {}
  for j, name in enumerate(feature_names):
    if name not in EPOCH_QUANTITIES:
      continue
    scale = FORMATS[name][1]
    ok_tr, ok_te = np.isfinite(f_tr[:, j]), np.isfinite(f_te[:, j])
    if ok_tr.sum() < 10 * _MIN_N or ok_te.sum() < _MIN_N:
      continue
    y_tr, y_te = f_tr[ok_tr, j] * scale, f_te[ok_te, j] * scale
    pred = _ridge(x_tr[ok_tr].astype(np.float64), y_tr, x_te[ok_te].astype(np.float64), l2)
    ss = ((y_te - y_te.mean())**2).sum()
    out[name] = {"n": int(ok_te.sum()),
                 "r2": float(1 - ((y_te - pred)**2).sum() / ss) if ss > 0 else float("nan"),
                 "mae": float(np.abs(pred - y_te).mean()),
                 "constant_mae": float(np.abs(y_tr.mean() - y_te).mean())}
  return out
