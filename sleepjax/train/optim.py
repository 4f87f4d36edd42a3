"""AdamW with linear warmup and cosine decay; weight decay on matmul kernels only.

Weight decay acts on the parameters that multiply an input: leaves named `kernel` (every
`nnx.Linear`) and sleep2vec attention's `q`/`k`/`v`/`out` ([D, heads, head_dim] einsum kernels).
Everything else is left alone, as CLIP/CoCa and ViT/BEiT do: biases, norm gains, `logit_scale`
and learned RoPE frequencies (scalars and vectors), and the embedding-like tables that are added
to or stand in for tokens rather than multiply them: sleep2vec's `mask_token` and
`modality_embed`, SleepLM's `channel_embed`, text `token_embed`/`pos_embed`/`cls`, caption
`prefix` and the attentional poolers' `query`. Decay there would pull learned tokens towards zero,
not regularise a linear map. The rule is by name, so a new 2-D parameter is undecayed until it is
named here (tests/test_precision.py lists every model's undecayed tables).

Extending a run (a resume with a larger `train.steps`) continues the decay from where it was: the
schedule is a list of segments `[start, end]`. The first is warmup + cosine from `lr` to
`optim.end_lr_fraction` (0.01) x `lr` over `[0, train.steps]`; a resume at step k that changes
`train.steps` to S appends `[k, S]`, over which the learning rate follows a cosine from its value
at step k down to the same end value. It never jumps back up: extending a finished run continues
at the end value, extending a run midway stretches the rest of its decay over the new length. The
segments are saved with every checkpoint (`meta.schedule`).
"""

import jax
import jax.numpy as jnp
import optax


def end_lr(config) -> float:
  return config.lr * config.end_lr_fraction


def base_schedule(config, total_steps: int) -> optax.Schedule:
  # warmup_fraction > 0 (sleep2vec: 0.03) sizes the warmup from the schedule's length.
  warmup = (int(config.warmup_fraction * total_steps) if config.warmup_fraction
            else config.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=end_lr(config))


def extend_segments(segments: list, step: int, total_steps: int) -> list:
  """The schedule after a resume at `step` asks for `total_steps` in all."""
  segments = [list(s) for s in segments]
  if total_steps != segments[-1][1] and total_steps > step:
    if segments[-1][0] == step:  # changed again before a step was taken: replace, do not stack
      segments[-1][1] = total_steps
      if len(segments) == 1:
        return segments
    else:
      segments.append([step, total_steps])
  return segments


def make_schedule(config, segments) -> optax.Schedule:
  """`segments`: an int (one schedule of that many steps) or `[[start, end], ...]` (see above)."""
  if isinstance(segments, int):
    segments = [[0, segments]]
  schedule = base_schedule(config, segments[0][1])
  end = end_lr(config)
  for start, stop in segments[1:]:
    schedule = _continue(schedule, start, stop, end)
  return schedule


def _continue(previous: optax.Schedule, start: int, stop: int, end: float) -> optax.Schedule:
  at_start = previous(start)

  def schedule(step):
    frac = jnp.clip((step - start) / max(stop - start, 1), 0.0, 1.0)
    tail = end + (at_start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < start, previous(step), tail)

  return schedule


# The names of the leaves that are matmul kernels (the rule above).
KERNELS = ("kernel", "q", "k", "v", "out")


def decay_mask(params):
  """True where AdamW's weight decay applies: matmul kernels, by name (module docstring)."""
  def is_kernel(path, p):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return p.ndim > 1 and bool(names) and names[-1] in KERNELS
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(config, segments) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`config`: `config.optim`; `segments`: total steps or schedule segments (see `make_schedule`)."""
  schedule = make_schedule(config, segments)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(schedule, b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay, mask=decay_mask))
  return tx, schedule
