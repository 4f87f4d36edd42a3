"""The GPU step's memory-saving forms (issue 25) against the plain code they replace, on CPU."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.families import sleeplm as family
from sleepjax.models import layers
from sleepjax.objectives import sleeplm as objectives
from tests.test_sleeplm import build, config, make_batch


def _caption_case(N=3, L=7, D=16, V=37, seed=0):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(N, L, D)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, V, size=(N, L)), jnp.int32)
  valid = jnp.asarray(np.arange(L)[None] < rng.integers(2, L + 1, size=(N, 1)))
  row = jnp.asarray([True, False, True][:N])
  return h, kernel, tokens, valid, row


def _plain(h, kernel, tokens, valid, row):
  return objectives.caption_loss(jnp.einsum("nld,dv->nlv", h, kernel), tokens, valid, row)


@pytest.mark.parametrize("chunk_tokens", [None, 1, 5, 128])  # one chunk; padded chunks; T < C
def test_projected_caption_loss_equals_plain_loss_and_gradients(chunk_tokens):
  h, kernel, tokens, valid, row = _caption_case()
  chunked = lambda h, k: objectives.projected_caption_loss(h, k, tokens, valid, row, chunk_tokens)
  plain = lambda h, k: _plain(h, k, tokens, valid, row)
  (loss, acc), (loss_p, acc_p) = chunked(h, kernel), plain(h, kernel)
  np.testing.assert_allclose(loss, loss_p, rtol=1e-6)
  np.testing.assert_allclose(acc, acc_p, rtol=1e-6)
  grads = jax.jit(jax.grad(lambda h, k: chunked(h, k)[0], (0, 1)))(h, kernel)
  grads_p = jax.grad(lambda h, k: plain(h, k)[0], (0, 1))(h, kernel)
  for g, g_p in zip(grads, grads_p):
    assert g.dtype == g_p.dtype
    np.testing.assert_allclose(g, g_p, rtol=1e-5, atol=1e-7)


def test_projected_caption_loss_in_bfloat16_matches_float32_reference():
  """bf16 matmuls, float32 logits and kernel gradient: within bf16 rounding of the f32 loss."""
  h, kernel, tokens, valid, row = _caption_case(N=4, L=9, D=32, V=50, seed=1)
  row = jnp.ones(4, bool)
  f = lambda h, k: objectives.projected_caption_loss(h, k, tokens, valid, row, 8)[0]
  loss, (dh, dk) = jax.value_and_grad(f, (0, 1))(h.astype(jnp.bfloat16), kernel)
  loss_p, (dh_p, dk_p) = jax.value_and_grad(lambda h, k: _plain(h, k, tokens, valid, row)[0],
                                            (0, 1))(h, kernel)
  assert dh.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
  np.testing.assert_allclose(loss, loss_p, rtol=2e-2)
  np.testing.assert_allclose(dh.astype(jnp.float32), dh_p, atol=5e-3 * np.abs(dh_p).max())
  np.testing.assert_allclose(dk, dk_p, atol=5e-3 * np.abs(dk_p).max())


def test_sleeplm_caption_loss_equals_the_plain_logits_loss(monkeypatch):
  """The family's loss (chunked projection) against caption_loss over the decoder's logits."""
  c = config()
  c.objective.lambda_con = c.objective.lambda_rec = 0.0  # the caption term alone
  model, batch, key = build(c), make_batch(c), jax.random.key(0)

  def plain_group_terms(m, sig, tokens, valid, group, row, features):
    del features  # the contrastive term is weighted 0 here
    logits = m.decoder(m.encode_text(tokens, valid)["states"], group, sig["memory"])
    cap, acc = objectives.caption_loss(logits, tokens, valid, row)
    return {"con": 0.0, "retrieval_top1": 0.0, "cap": cap, "caption_token_acc": acc}

  def plain_loss(model):
    with monkeypatch.context() as patch:
      patch.setattr(family, "group_terms", plain_group_terms)
      return family.loss(model, batch, key)

  graphdef, params = nnx.split(model)
  grad = lambda f: jax.jit(jax.value_and_grad(lambda p: f(nnx.merge(graphdef, p)), has_aux=True))
  (loss, metrics), g = grad(lambda m: family.loss(m, batch, key))(params)
  (loss_p, metrics_p), g_p = grad(plain_loss)(params)
  np.testing.assert_allclose(loss, loss_p, rtol=1e-5)
  np.testing.assert_allclose(metrics["caption_token_acc"], metrics_p["caption_token_acc"])
  # atol: float32 sums in another order, on gradients of order 1 (with the channel-patch tokens in
  # the memory one element of 16,384 differs by 1.6e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _rotate_before(x, angle, interleaved):
  """`layers.rotate` as it was (slices + stack, split + concatenate)."""
  x32 = x.astype(jnp.float32)
  cos, sin = jnp.cos(angle)[:, None], jnp.sin(angle)[:, None]
  if interleaved:
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    y = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(x.shape)
  else:
    x1, x2 = jnp.split(x32, 2, axis=-1)
    y = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return y.astype(x.dtype)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rotate_without_concatenation_is_bit_identical(interleaved, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 3, 8)), dtype)
  angle = layers.rope_angles(jnp.arange(9), 8)
  rot = lambda x: layers.rotate(x, angle, interleaved)
  before = lambda x: _rotate_before(x, angle, interleaved)
  np.testing.assert_array_equal(rot(x), before(x))
  np.testing.assert_array_equal(jax.jit(rot)(x), jax.jit(before)(x))
  vjp = lambda f: jax.vjp(lambda x: f(x, angle, interleaved), x)[1](x)[0]
  np.testing.assert_allclose(vjp(layers.rotate).astype(jnp.float32),
                             vjp(_rotate_before).astype(jnp.float32), rtol=1e-6, atol=1e-6)
