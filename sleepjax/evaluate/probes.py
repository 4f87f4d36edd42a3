"""Heads fitted on frozen embeddings: linear classifiers (class-balanced softmax or per-output
sigmoid), closed-form ridge regression, label-fraction subsampling, regularisation chosen on val.

Every fit standardises features with the training rows' mean and sd and is deterministic given its
seed; predictions are numpy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _standardise(x_NxD: np.ndarray):
  mu_D, sd_D = x_NxD.mean(0), x_NxD.std(0) + 1e-6
  norm = lambda x: ((x - mu_D) / sd_D).astype(np.float32)  # noqa: E731
  norm.mu, norm.sd = mu_D, sd_D
  return norm


def _adam(loss_fn, shape, *, steps: int, lr, seed):
  params = {"w": 0.01 * jax.random.normal(jax.random.key(seed), shape),
            "b": jnp.zeros(shape[1])}
  tx = optax.adam(lr)

  def body(carry, _):
    p, opt = carry
    updates, opt = tx.update(jax.grad(loss_fn)(p), opt)
    return (optax.apply_updates(p, updates), opt), None
  (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
  return params


def _rows(n: int) -> int:
  """Rows a fit is padded to (weight 0): a power of two, so the fits of an evaluation (every label
  fraction, seed and regularisation) share a few compiled programs instead of one each."""
  return max(64, 1 << (n - 1).bit_length())


def _padded(a: np.ndarray, n: int) -> jax.Array:
  return jnp.asarray(np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)]))


@functools.partial(jax.jit, static_argnames=("n_classes", "steps"))
def _fit_softmax(xs_NxD, y_N, w_N, l2, lr, seed, *, n_classes: int, steps: int):
  def loss_fn(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(xs_NxD @ p["w"] + p["b"], y_N)
    return (ce * w_N).sum() / w_N.sum() + l2 * jnp.sum(p["w"] ** 2)
  return _adam(loss_fn, (xs_NxD.shape[1], n_classes), steps=steps, lr=lr, seed=seed)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_sigmoid(xs_NxD, y_NxY, row_N, w_pos_Y, w_neg_Y, l2, lr, seed, *, steps: int):
  def loss_fn(p):
    z = xs_NxD @ p["w"] + p["b"]
    bce = -(y_NxY * w_pos_Y * jax.nn.log_sigmoid(z)
            + (1 - y_NxY) * w_neg_Y * jax.nn.log_sigmoid(-z))
    return (bce * row_N[:, None]).sum() / (row_N.sum() * y_NxY.shape[1]) + l2 * jnp.sum(p["w"] ** 2)
  return _adam(loss_fn, (xs_NxD.shape[1], y_NxY.shape[1]), steps=steps, lr=lr, seed=seed)


def fit_linear_probe(x_NxD: np.ndarray, y_N: np.ndarray, n_classes: int, *, steps: int, lr: float,
                     l2: float, seed: int = 0):
  """Class-balanced multinomial logistic regression (full-batch Adam); returns predict(x) -> labels
  (with predict.proba(x) -> probabilities)."""
  keep = y_N >= 0
  x_NxD, y_N = x_NxD[keep], y_N[keep]
  norm = _standardise(x_NxD)
  counts_Y = np.bincount(y_N, minlength=n_classes)
  weight_Y = np.where(counts_Y > 0, len(y_N) / (n_classes * np.maximum(counts_Y, 1)), 0)
  n = _rows(len(y_N))
  params = jax.device_get(_fit_softmax(
      _padded(norm(x_NxD), n), _padded(y_N, n), _padded(weight_Y[y_N].astype(np.float32), n),
      l2, lr, seed, n_classes=n_classes, steps=steps))

  def logits(x):
    return norm(x) @ params["w"] + params["b"]

  def predict(x: np.ndarray) -> np.ndarray:
    return np.argmax(logits(x), -1)

  predict.proba = lambda x: np.asarray(jax.nn.softmax(logits(x), -1))
  predict.head = {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]), "mu": norm.mu,
                  "sd": norm.sd}  # logits = ((x - mu) / sd) @ w + b
  return predict


def fit_sigmoid_probe(x_NxD: np.ndarray, y_NxY: np.ndarray, *, steps: int, lr: float, l2: float,
                      seed: int = 0):
  """Independent logistic outputs (multi-label, positives re-weighted to balance each output);
  returns scores(x) -> probabilities [N, Y]."""
  norm = _standardise(x_NxD)
  pos_Y = np.clip(y_NxY.mean(0), 1e-3, 1 - 1e-3).astype(np.float32)
  n = _rows(len(y_NxY))
  params = jax.device_get(_fit_sigmoid(
      _padded(norm(x_NxD), n), _padded(y_NxY.astype(np.float32), n),
      _padded(np.ones(len(y_NxY), np.float32), n), 0.5 / pos_Y, 0.5 / (1 - pos_Y), l2, lr, seed,
      steps=steps))
  return lambda x: np.asarray(jax.nn.sigmoid(norm(x) @ params["w"] + params["b"]))


def fit_ridge(x_NxD: np.ndarray, y_N: np.ndarray, alpha: float):
  """Closed-form ridge regression on standardised features (intercept unpenalised)."""
  keep = np.isfinite(y_N)
  x_NxD, y_N = x_NxD[keep], y_N[keep]
  norm = _standardise(x_NxD)
  xs = norm(x_NxD).astype(np.float64)
  y_mean = y_N.mean()
  w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ (y_N - y_mean))
  return lambda x: norm(x).astype(np.float64) @ w + y_mean


def label_fraction(y_N: np.ndarray, fraction: float, seed: int, n_classes: int) -> np.ndarray:
  """Indices of a random `fraction` of the labelled rows (at least one per class present, so a
  1 % probe can still name every stage)."""
  labelled = np.flatnonzero(y_N >= 0)
  rng = np.random.default_rng(seed)
  n = max(int(round(fraction * len(labelled))), 1)
  chosen = set(rng.choice(labelled, size=min(n, len(labelled)), replace=False).tolist())
  for k in range(n_classes):
    rows = labelled[y_N[labelled] == k]
    if len(rows) and not chosen.intersection(rows.tolist()):
      chosen.add(int(rng.choice(rows)))
  return np.array(sorted(chosen), np.int64)


def choose(candidates, score):
  """The candidate with the highest score (first one on ties) and all scores, for the report."""
  scores = [float(score(c)) for c in candidates]
  return candidates[int(np.nanargmax(scores))], dict(zip(map(str, candidates), scores))
