"""AdamW with linear warmup and cosine decay; no weight decay on vectors (biases, norms)."""

import jax
import optax


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  # warmup_fraction > 0 (sleep2vec: 0.03) sizes the warmup from the schedule's length.
  warmup = (int(config.warmup_fraction * total_steps) if config.get("warmup_fraction", 0)
            else config.warmup_steps)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=config.lr * config.get("end_lr_fraction", 0.01))
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.b2,
                  weight_decay=config.weight_decay, mask=decay_mask))
  return tx, schedule
