"""AdamW with linear warmup and cosine decay; no weight decay on vectors (biases, norms)."""

import jax
import optax


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=config.warmup_steps,
      decay_steps=max(total_steps, config.warmup_steps + 1), end_value=config.lr * 0.01)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(schedule, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask))
  return tx, schedule
