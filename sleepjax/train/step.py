"""The jitted train step: a pure function of (state, batch) with explicit shardings.

Family-agnostic: the loss is `FAMILIES[config.model.family].loss(model, batch, rng)`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sleepjax.families import get_family
from sleepjax.train import gradcache
from sleepjax.train.state import TrainState, compute_params


def ema_momentum(step, total_steps: int, base: float):
  """EMA momentum: `base` at step 0 rising to 1 on a cosine over `total_steps` (BYOL/sleep2vec).

  `base` 0 means no EMA: the momentum stays 0, so the EMA is the parameters themselves at every
  step (a ramp from 0 would still average over the run's last ~sixth, not what was trained last).
  """
  if base == 0:
    return jnp.zeros_like(jnp.asarray(step, jnp.float32))
  progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_initial_weight(total_steps: int, base: float) -> float:
  """The weight the EMA still gives the initial (random) parameters after `total_steps` steps:
  the product of the momenta. Near 1 the EMA is mostly the random init (a short run with the
  paper's 0.996, made for 100k steps), so the trainer warns above 1 %."""
  momenta = np.asarray(ema_momentum(np.arange(total_steps), total_steps, base), np.float64)
  return float(np.exp(np.log(np.maximum(momenta, 1e-300)).sum()))


def ema_update(ema, params, momentum):
  return jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, ema, params)


def _keep_dtypes(new, old):
  """The optimizer state in the dtypes it was created with: a bfloat16 first moment comes back
  from optax as float32 (bf16 moment + f32 gradient) and is rounded back for storage, as optax's
  own `mu_dtype` does (the update itself used the float32 value)."""
  return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def make_train_step(graphdef, tx, schedule, config):
  """Returns train_step(state, batch) -> (state, metrics) for the configured model family.

  A step whose loss or gradient norm is not finite is skipped: parameters and EMA stay exactly as
  they were, AdamW sees a zero gradient (its moments decay once by b1 and b2, its count advances),
  the step counter and rng advance and the batch is consumed; metrics carry `skipped` (0/1). Every
  choice sits inside arithmetic the step does anyway — a select on the gradients, a select on the
  update, an EMA momentum of 1 — so XLA fuses it: keeping the moments themselves took a select
  over the optimizer state that XLA:CPU ran as a pass of its own (+25 % step time at the smoke
  config, 8 replicas), and `lax.cond` around the update still cost +10 % there and would make a
  GPU wait for its predicate on the host.
  """
  family = get_family(config)
  ema_base = config.train.ema_momentum

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    # train.microbatches > 1: GradCache accumulation, negatives stay global (train/gradcache.py).
    # model.param_dtype: the forward/backward (and FSDP's gathers) use a cast of the float32
    # master; the optimizer steps the master in float32 (train/state.py).
    (loss, metrics), grads = gradcache.value_and_grad(
        family, graphdef, compute_params(state.params, config), batch, step_rng,
        config.train.microbatches)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(jax.tree.map(lambda g: jnp.where(ok, g, 0), grads),
                                   state.opt_state, state.params)
    opt_state = _keep_dtypes(opt_state, state.opt_state)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: jnp.where(ok, u, 0), updates))
    momentum = ema_momentum(state.step, config.train.steps, ema_base)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "ema_momentum": momentum, "skipped": 1.0 - ok.astype(jnp.float32)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      rng=jax.random.key_data(rng),
                      ema_params=ema_update(state.ema_params, params,
                                            jnp.where(ok, momentum, 1.0))), metrics

  return train_step
