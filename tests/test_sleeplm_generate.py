"""SleepLM generation: KV-cache decoding equals full re-decoding; greedy and beam search.

At text and decoder depth 2 with 2 prefix tokens per group: a cache slot written at the wrong
position, a layer reading another layer's cache, or a prefix that sees text only show past the
first layer and the first prefix token."""

import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.families import sleeplm as family
from sleepjax.models.sleeplm import decode
from sleepjax.caption_tokenizer import BOS_ID, EOS_ID, PAD_ID
from tests.test_sleeplm import build, caption_logits, deep_config, make_batch, scanned_copy


def _setup():
  c = deep_config()
  model = build(c)
  batch = make_batch(c, B=1, W=3)
  x, present = nnx.jit(family.flat_inputs)(model, batch)
  memory = nnx.jit(lambda m, x, p: m.encode_signal(x, p)["memory"])(model, x, present)
  return model, batch, x, present, memory


def test_kv_cache_logits_equal_full_decoding():
  model, batch, _, _, memory = _setup()
  tokens = jnp.asarray(batch["captions"][0, :, 1, :20])
  group = jnp.array([0, 2, 4])
  full = caption_logits(model, tokens, jnp.ones_like(tokens, bool), group, memory)
  cached = nnx.jit(decode.cached_logits)(model, memory, group, tokens)
  np.testing.assert_allclose(cached, full, atol=2e-4, rtol=2e-4)


def test_greedy_equals_argmax_of_full_redecoding():
  model, _, x, present, memory = _setup()
  group = jnp.array([0, 1, 3])
  max_len = 12
  out = np.asarray(decode.caption(model, x, present, group, max_len=max_len))
  assert (out[:, 0] == BOS_ID).all()
  # causal decoding: the full logits at position t - 1 are the next-token logits given out[:, :t]
  full = caption_logits(model, jnp.asarray(out), jnp.ones(out.shape, bool), group, memory)
  want = np.argmax(np.asarray(full[:, :-1]), -1)
  finished = np.cumsum(out[:, :-1] == EOS_ID, 1) > 0
  np.testing.assert_array_equal(np.where(finished, PAD_ID, want), out[:, 1:])


def test_beam_search():
  model, _, x, present, memory = _setup()
  group = jnp.array([0, 1, 3])
  greedy = decode.caption(model, x, present, group, max_len=10)
  one_beam = decode.caption(model, x, present, group, max_len=10, beams=1)
  np.testing.assert_array_equal(greedy, one_beam)
  tokens, score = nnx.jit(decode.beam_search, static_argnames=("max_len", "beams"))(
      model, memory, group, max_len=10, beams=4)
  assert tokens.shape == (3, 10) and (np.asarray(tokens[:, 0]) == BOS_ID).all()
  assert np.isfinite(np.asarray(score)).all()
  # the returned beam's score is its own log-probability under full decoding (per token)
  logits = caption_logits(model, tokens, jnp.ones_like(tokens, bool), group, memory)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  tok = np.asarray(tokens)
  per_tok = np.take_along_axis(np.asarray(logp), tok[:, 1:, None], -1)[..., 0]
  live = np.ones_like(per_tok, bool)
  for n in range(len(tok)):
    ends = np.where(tok[n, 1:] == EOS_ID)[0]
    if len(ends):
      live[n, ends[0] + 1:] = False
  want = (per_tok * live).sum(1) / live.sum(1)
  np.testing.assert_allclose(score, want, rtol=1e-3, atol=1e-3)


def test_scanned_towers_decode_like_the_loop():
  """model.scan_blocks: the caches stacked on a layers axis (a beam's pick on the batch axis
  behind it) decode as the looped towers' per-layer caches do."""
  model, _, _, _, memory = _setup()
  scan = scanned_copy(deep_config(), model)
  group = jnp.array([0, 1, 3])
  search = nnx.jit(decode.beam_search, static_argnames=("max_len", "beams"))
  tokens, score = search(model, memory, group, max_len=8, beams=3)
  tokens_s, score_s = search(scan, memory, group, max_len=8, beams=3)
  np.testing.assert_array_equal(tokens_s, tokens)
  np.testing.assert_allclose(score_s, score, rtol=1e-5, atol=1e-6)
  cached = nnx.jit(decode.cached_logits)
  np.testing.assert_allclose(cached(scan, memory, group, tokens),
                             cached(model, memory, group, tokens), rtol=1e-5, atol=1e-5)
