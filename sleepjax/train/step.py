"""The jitted train step: a pure function of (state, batch) with explicit shardings."""

import jax
import optax
from flax import nnx

from sleepjax.objectives.infonce import pairwise_info_nce
from sleepjax.train.state import TrainState


def make_train_step(graphdef, tx, schedule, config):
  """Returns train_step(state, batch) -> (state, metrics) for sleep2vec pairwise InfoNCE."""

  def loss_fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    out = model(batch["signals"], batch["masks"])
    return pairwise_info_nce(out["z"], out["present"], config.objective.temperature,
                             config.objective.pair_strategy, rng)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
               "lr": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      rng=jax.random.key_data(rng)), metrics

  return train_step
