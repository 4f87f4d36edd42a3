"""SleepLM caption decoding: greedy and beam search with key/value caches, conditioned on a
caption group (the decoder's learnable prefix).

Each step runs one token through the text tower and the caption decoder, reading and writing
per-layer caches (`TextTower.step`, `CaptionDecoder.step`); the cross-attention keys and values of
the signal memory are computed once. Sequences are [N, max_len]: BOS, tokens, EOS, then pad.
"""

import functools

import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.caption_tokenizer import BOS_ID, EOS_ID, PAD_ID
from sleepjax.models.sleeplm.model import GROUPS

_NEG = -1e9


def _start(model, memory_NxMxD, group_N, max_len: int):
  n = memory_NxMxD.shape[0]
  cross = model.decoder.cross_kv(memory_NxMxD)
  dec_cache = model.decoder.prefill(group_N, model.decoder.init_cache(n, max_len), cross)
  return model.text.init_cache(n, max_len), dec_cache, cross


def _next_logits(pure, token_N, t, text_cache, dec_cache, cross):
  """One token through the towers; `pure` = nnx.split(model). The model is merged inside the loop
  body as new Variables (`copy`): a scanned tower's nnx.scan refuses Variables of the trace
  outside the loop."""
  model = nnx.merge(*pure, copy=True)
  states, text_cache = model.text.step(token_N[:, None], t, text_cache)
  logits, dec_cache = model.decoder.step(states, t, dec_cache, cross)
  return logits[:, 0], text_cache, dec_cache


def cached_logits(model, memory_NxMxD, group_N, tokens_NxL) -> jax.Array:
  """Teacher-forced logits [N, L, V] computed one token at a time through the caches (equals
  `model.caption_logits` on the whole sequence; the tests check it)."""
  L = tokens_NxL.shape[1]
  text_cache, dec_cache, cross = _start(model, memory_NxMxD, group_N, L)
  pure = nnx.split(model)

  def body(carry, t):
    text_cache, dec_cache = carry
    logits, text_cache, dec_cache = _next_logits(pure, tokens_NxL[:, t], t, text_cache,
                                                 dec_cache, cross)
    return (text_cache, dec_cache), logits

  _, logits_LxNxV = jax.lax.scan(body, (text_cache, dec_cache), jnp.arange(L))
  return logits_LxNxV.transpose(1, 0, 2)


def greedy(model, memory_NxMxD, group_N, max_len: int) -> jax.Array:
  """Most likely token at every step, until EOS (then pad). -> tokens [N, max_len]."""
  n = memory_NxMxD.shape[0]
  text_cache, dec_cache, cross = _start(model, memory_NxMxD, group_N, max_len)
  pure = nnx.split(model)
  tokens = jnp.full((n, max_len), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)

  def body(t, carry):
    tokens, text_cache, dec_cache, done = carry
    logits, text_cache, dec_cache = _next_logits(pure, tokens[:, t], t, text_cache, dec_cache,
                                                 cross)
    nxt = jnp.where(done, PAD_ID, jnp.argmax(logits, -1).astype(jnp.int32))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], t + 1, 1)
    return tokens, text_cache, dec_cache, done | (nxt == EOS_ID)

  init = (tokens, text_cache, dec_cache, jnp.zeros((n,), bool))
  return jax.lax.fori_loop(0, max_len - 1, body, init)[0]


greedy_jit = nnx.jit(greedy, static_argnames=("max_len",))


def beam_search(model, memory_NxMxD, group_N, max_len: int, beams: int,
                length_penalty: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Beam search; finished beams stay in the beam and extend with pad at no cost. The best beam
  by log-probability / length**length_penalty. -> (tokens [N, max_len], score [N])."""
  n, K = memory_NxMxD.shape[0], beams
  memory = jnp.repeat(memory_NxMxD, K, 0)
  text_cache, dec_cache, cross = _start(model, memory, jnp.repeat(group_N, K, 0), max_len)
  pure = nnx.split(model)
  tokens = jnp.full((n * K, max_len), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)
  scores = jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, _NEG), (n, 1))  # one live beam at first
  only_pad = jnp.where(jnp.arange(model.decoder.out.out_features) == PAD_ID, 0.0, _NEG)

  def body(t, carry):
    tokens, text_cache, dec_cache, scores, done, length = carry
    logits, text_cache, dec_cache = _next_logits(pure, tokens[:, t], t, text_cache, dec_cache,
                                                 cross)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    logp = jnp.where(done[:, None], only_pad[None], logp)
    V = logp.shape[-1]
    cand = (scores[:, :, None] + logp.reshape(n, K, V)).reshape(n, K * V)
    scores, index = jax.lax.top_k(cand, K)
    parent = (jnp.arange(n)[:, None] * K + index // V).reshape(-1)
    token = (index % V).reshape(-1).astype(jnp.int32)
    pick = lambda x: jnp.take(x, parent, 0)
    tokens, done, length = pick(tokens), pick(done), pick(length)
    # Cache leaves are [(layers,) N, length, H, K]: a scanned tower stacks its layers first.
    text_cache, dec_cache = jax.tree.map(lambda x: jnp.take(x, parent, x.ndim - 4),
                                         (text_cache, dec_cache))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], t + 1, 1)
    length = length + (~done)
    return tokens, text_cache, dec_cache, scores, done | (token == EOS_ID), length

  init = (tokens, text_cache, dec_cache, scores, jnp.zeros((n * K,), bool),
          jnp.zeros((n * K,), jnp.int32))
  tokens, _, _, scores, _, length = jax.lax.fori_loop(0, max_len - 1, body, init)
  norm = scores / jnp.maximum(length.reshape(n, K), 1).astype(jnp.float32) ** length_penalty
  best = jnp.argmax(norm, -1)
  return tokens.reshape(n, K, max_len)[jnp.arange(n), best], norm[jnp.arange(n), best]


@functools.partial(nnx.jit, static_argnames=("max_len", "beams"))
def caption(model, x_NxCxS, present_NxC, group_N, *, max_len: int, beams: int = 1) -> jax.Array:
  """Signals (the model's input stage output) -> caption tokens [N, max_len] for each epoch's
  `group_N` (greedy when beams == 1)."""
  memory = model.encode_signal(x_NxCxS, present_NxC)["memory"]
  if beams == 1:
    return greedy(model, memory, group_N, max_len)
  return beam_search(model, memory, group_N, max_len, beams)[0]


@nnx.jit
def token_logprobs(model, memory_NxMxD, group_N, tokens_NxL, valid_NxL) -> jax.Array:
  """Teacher-forced log-probabilities [N, L, V]: position i is the distribution of token i + 1
  given the memory, the group and tokens 0..i (padding after a row's text changes nothing before
  it: the masks are causal)."""
  logits = model.caption_logits(tokens_NxL, valid_NxL, group_N, memory_NxMxD)
  return jax.nn.log_softmax(logits.astype(jnp.float32), -1)


def sequence_logprob(model, memory_NxMxD, group_N, tokens_NxL, valid_NxL) -> jax.Array:
  """log p(tokens 1.. | memory, group) summed over each row's real tokens -> [N]."""
  logp = token_logprobs(model, memory_NxMxD, group_N, tokens_NxL, valid_NxL)
  picked = jnp.take_along_axis(logp[:, :-1], tokens_NxL[:, 1:, None], -1)[..., 0]
  return jnp.where(valid_NxL[:, 1:], picked, 0.0).sum(-1)


def _groups(group: str) -> list[int]:
  if group == "all":
    return list(range(len(GROUPS)))
  if group not in GROUPS:
    raise ValueError(f"caption group {group!r}; choose from {', '.join(GROUPS)} or 'all'")
  return [GROUPS.index(group)]


@nnx.jit  # at module level: traced once per chunk shape, not once per call
def _assemble(model, signals, masks):
  return model.inputs(signals, masks)


def caption_epochs(model, tokenizer, signals: dict, masks: dict, group: str = "stage_event", *,
                   max_len: int = 48, beams: int = 1, chunk: int = 10,
                   epochs: list[int] | None = None) -> list[dict[str, str]]:
  """Generated captions of consecutive epochs: signals[m] [E, C, S], masks[m] [E, C] ->
  one {group: text} per epoch of `epochs` (default all). The input stage resamples windows of
  `chunk` consecutive epochs as one continuous recording, whichever of their epochs are captioned."""
  n = len(next(iter(masks.values())))
  wanted = list(range(n)) if epochs is None else sorted(epochs)
  out = {e: {} for e in wanted}
  for start in range(0, n, chunk):
    rows = [e - start for e in wanted if start <= e < start + chunk]
    if not rows:
      continue
    sl = slice(start, min(start + chunk, n))
    x, present = _assemble(
        model, {m: jnp.asarray(s[sl], jnp.float32)[None] for m, s in signals.items()},
        {m: jnp.asarray(k[sl])[None] for m, k in masks.items()})
    x, present = x[0][np.array(rows)], present[0][np.array(rows)]
    for g in _groups(group):
      ids = caption(model, x, present, jnp.full((x.shape[0],), g), max_len=max_len, beams=beams)
      for r, text in zip(rows, tokenizer.decode(jax.device_get(ids))):
        out[start + r][GROUPS[g]] = text
  return [out[e] for e in wanted]
