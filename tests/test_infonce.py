import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax.objectives.infonce import info_nce, pairwise_info_nce


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(za, zb, t):
  logits = za @ zb.T / t
  la = -np.diag(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
  lb = -np.diag(logits - np.log(np.exp(logits).sum(0, keepdims=True)))
  return 0.5 * (la + lb).mean()


def test_matches_numpy_reference_and_ignores_invalid_rows():
  rng = np.random.default_rng(0)
  za, zb = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(6, 8)))
  valid = np.array([1, 1, 0, 1, 1, 0], bool)
  loss, _ = info_nce(jnp.asarray(za), jnp.asarray(zb), jnp.asarray(valid), 0.2)
  np.testing.assert_allclose(loss, _reference(za[valid], zb[valid], 0.2), rtol=1e-5)


def test_aligned_pairs_have_low_loss_and_perfect_retrieval():
  z = _unit(np.random.default_rng(1).normal(size=(16, 32)))
  loss, acc = info_nce(jnp.asarray(z), jnp.asarray(z), jnp.ones(16, bool), 0.05)
  shuffled, _ = info_nce(jnp.asarray(z), jnp.asarray(z[::-1]), jnp.ones(16, bool), 0.05)
  assert acc == 1.0 and loss < 0.1 < shuffled


def test_pair_strategies():
  rng = np.random.default_rng(2)
  z = jnp.asarray(_unit(rng.normal(size=(2, 3, 4, 8))))  # B, M, W, P
  present = np.ones((2, 3, 4), bool)
  present[:, 2] = False  # modality 2 absent everywhere: pairs (0,2), (1,2) are unusable
  all_loss, _ = pairwise_info_nce(z, jnp.asarray(present), 0.2, "all_pairs", jax.random.key(0))
  only_01, _ = info_nce(z[:, 0].reshape(8, 8), z[:, 1].reshape(8, 8), jnp.ones(8, bool), 0.2)
  np.testing.assert_allclose(all_loss, only_01, rtol=1e-5)
  for seed in range(5):  # the random pair is always the one usable pair
    loss, _ = pairwise_info_nce(z, jnp.asarray(present), 0.2, "random_pair", jax.random.key(seed))
    np.testing.assert_allclose(loss, only_01, rtol=1e-5)
  with pytest.raises(ValueError, match="strategy"):
    pairwise_info_nce(z, jnp.asarray(present), 0.2, "nope", jax.random.key(0))
