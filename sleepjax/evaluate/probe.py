"""Linear probe: class-balanced multinomial logistic regression on frozen embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit_linear_probe(x_NxD: np.ndarray, y_N: np.ndarray, n_classes: int, *, steps: int, lr: float,
                     l2: float, seed: int = 0):
  """Full-batch Adam on standardised features; returns predict(x) -> labels."""
  keep = y_N >= 0
  x_NxD, y_N = x_NxD[keep], y_N[keep]
  mu_D, sd_D = x_NxD.mean(0), x_NxD.std(0) + 1e-6
  counts_K = np.bincount(y_N, minlength=n_classes)
  weight_K = jnp.asarray(np.where(counts_K > 0, len(y_N) / (n_classes * np.maximum(counts_K, 1)), 0))
  xs, ys = jnp.asarray((x_NxD - mu_D) / sd_D), jnp.asarray(y_N)
  params = {"w": 0.01 * jax.random.normal(jax.random.key(seed), (x_NxD.shape[1], n_classes)),
            "b": jnp.zeros(n_classes)}
  tx = optax.adam(lr)

  def loss_fn(p):
    logits = xs @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys)
    return (ce * weight_K[ys]).mean() + l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def fit(p):
    def body(carry, _):
      p, opt = carry
      grads = jax.grad(loss_fn)(p)
      updates, opt = tx.update(grads, opt)
      return (optax.apply_updates(p, updates), opt), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return p

  params = jax.device_get(fit(params))

  def predict(x: np.ndarray) -> np.ndarray:
    return np.argmax(((x - mu_D) / sd_D) @ params["w"] + params["b"], -1)

  return predict
