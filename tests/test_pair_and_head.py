"""sleep2vec's per-global-batch pair draw, its per-modality BatchNorm head and the retrieval metric."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleepjax.families import sleep2vec as family
from sleepjax.models.sleep2vec import MaskedBatchNorm
from sleepjax.objectives.dash import dash_info_nce_with_accuracy, dash_weights
from sleepjax.train.state import build_model

MODALITIES = {"eeg": (128, 2), "ecg": (128, 1), "spo2": (4, 1)}


def _masks(B=6, W=3, absent=()):
  masks = {m: np.ones((B, W, c), bool) for m, (_, c) in MODALITIES.items()}
  for m in absent:
    masks[m][:] = False
  return {m: jnp.asarray(x) for m, x in masks.items()}


def _pair_first_model(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.objective.pair_strategy = "pair_first"
  return build_model(config, MODALITIES, seed=0)


def test_pair_is_drawn_uniformly_among_the_pairs_present(tiny_config):
  """A fully present batch of three modalities trains each of the three pairs about equally
  often (600 draws: each share within 5 sd of 1/3); a modality absent everywhere is never drawn.
  The pair rides with every row, so micro-batches and devices all read the same one."""
  model = _pair_first_model(tiny_config)
  draw = jax.jit(lambda masks, key: family.draw_pair(model, {"masks": masks}, key)["pair"])
  keys = jax.random.split(jax.random.key(0), 600)
  full = collections.Counter(tuple(np.asarray(draw(_masks(), k))[0]) for k in keys)
  assert set(full) == {(0, 1), (0, 2), (1, 2)}, full
  sd = np.sqrt(600 / 3 * 2 / 3)
  assert all(abs(n - 200) < 5 * sd for n in full.values()), full
  pair = np.asarray(draw(_masks(), keys[0]))
  assert (pair == pair[0]).all() and pair.shape == (6, 2)
  no_ecg = collections.Counter(tuple(np.asarray(draw(_masks(absent=("ecg",)), k))[0])
                               for k in keys[:50])
  assert set(no_ecg) == {(0, 2)}, no_ecg


def test_two_modality_batches_and_other_strategies_draw_nothing(tiny_config):
  model = _pair_first_model(tiny_config)
  two = {"masks": {m: v for m, v in _masks().items() if m != "spo2"}}
  assert "pair" not in family.draw_pair(model, two, jax.random.key(0))
  model.objective = family.Objective(pair_strategy="all_pairs")
  assert "pair" not in family.draw_pair(model, {"masks": _masks()}, jax.random.key(0))


def test_batch_norm_statistics_are_per_modality_over_present_tokens():
  """An offset on one modality leaves the other's output unchanged (statistics per modality);
  anything in absent tokens changes no present token's output (they take no part)."""
  rng = np.random.default_rng(0)
  x_BxMxWxF = jnp.asarray(rng.normal(size=(4, 2, 5, 3)), jnp.float32)
  valid_BxMxW = jnp.asarray(rng.random((4, 2, 5)) < 0.7)
  with nnx.use_eager_sharding(False):
    norm = MaskedBatchNorm(3, rngs=nnx.Rngs(0))
  y = norm(x_BxMxWxF, valid_BxMxW)
  shifted = norm(x_BxMxWxF.at[:, 1].add(5.0 * x_BxMxWxF[:, 1] + 3.0), valid_BxMxW)
  np.testing.assert_allclose(shifted[:, 0], y[:, 0], rtol=1e-5, atol=1e-6)
  junk = norm(jnp.where(valid_BxMxW[..., None], x_BxMxWxF, 1e3), valid_BxMxW)
  np.testing.assert_allclose(jnp.where(valid_BxMxW[..., None], junk, 0),
                             jnp.where(valid_BxMxW[..., None], y, 0), rtol=1e-5, atol=1e-6)
  # Each modality's present tokens come out standardised on their own.
  for m in range(2):
    v = np.asarray(y[:, m])[np.asarray(valid_BxMxW[:, m])]
    np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.std(0), 1.0, rtol=1e-3)


def test_projection_head_has_no_bias_before_batch_norm(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  assert model.head.fc1.bias is None and model.head.fc2.bias is None
  config = tiny_config.copy_and_resolve_references()
  config.model.head_norm = "layer"
  assert build_model(config, MODALITIES, seed=0).head.fc1.bias is not None


def _top1_reference(za, zb, valid):
  """Mean of a->b and b->a top-1 over the plain cosines, per position, valid rows and columns."""
  za = za / np.linalg.norm(za, axis=-1, keepdims=True)
  zb = zb / np.linalg.norm(zb, axis=-1, keepdims=True)
  hits, n = 0.0, 0
  for l in range(za.shape[1]):
    cols = np.flatnonzero(valid[:, l])
    cos = za[cols, l] @ zb[cols, l].T
    hits += 0.5 * ((cos.argmax(1) == np.arange(len(cols))).sum()
                   + (cos.argmax(0) == np.arange(len(cols))).sum())
    n += len(cols)
  return hits / n


def test_retrieval_top1_is_unweighted_and_symmetric():
  """DAS-H weights and hard marks shape the loss, not the retrieval metric."""
  rng = np.random.default_rng(1)
  B, L, P = 12, 3, 4
  za = rng.normal(size=(B, L, P))
  zb = za + 0.9 * rng.normal(size=(B, L, P))
  valid = rng.random((B, L)) < 0.8
  w, h = dash_weights(rng.uniform(20, 80, B), rng.integers(0, 2, B), rng.integers(0, 2, B),
                      np.arange(B) // 2, gamma_same=3.0, gamma_diff=0.2)
  _, top1 = dash_info_nce_with_accuracy(za, zb, w, h, 0.2, 2.0, valid)
  np.testing.assert_allclose(float(top1), _top1_reference(za, zb, valid), rtol=1e-6)
