import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax.objectives.dash import dash_info_nce, plain_weights
from sleepjax.objectives.infonce import contrastive_loss


def _objective(**kw):
  base = dict(loss="info_nce", pair_strategy="all_pairs", negatives="per_step", temperature=0.2,
              hard_scale=0.1, sigma_age=20.0, alpha_sex=0.8, gamma_same=1.3, gamma_diff=0.8,
              eps=1e-6)
  return types.SimpleNamespace(**{**base, **kw})


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _meta(B):
  return {"age": np.full(B, 40.0), "sex": np.zeros(B, int), "site": np.zeros(B, int),
          "recording": np.arange(B)}


def test_all_pairs_skips_unusable_pairs():
  rng = np.random.default_rng(2)
  z = jnp.asarray(_unit(rng.normal(size=(4, 3, 5, 8))))  # B, M, W, P
  present = np.ones((4, 3, 5), bool)
  present[:, 2] = False  # modality 2 absent everywhere: pairs (0,2), (1,2) are unusable
  loss, _ = contrastive_loss(z, jnp.asarray(present), _meta(4), _objective())
  only_01 = dash_info_nce(z[:, 0], z[:, 1], *plain_weights(4), 0.2, 0.1)
  np.testing.assert_allclose(loss, only_01, rtol=1e-5)


def test_pair_first_and_leave_one_out():
  rng = np.random.default_rng(3)
  z = jnp.asarray(_unit(rng.normal(size=(4, 2, 5, 8))))
  present = jnp.ones((4, 2, 5), bool)
  first, _ = contrastive_loss(z, present, _meta(4), _objective(pair_strategy="pair_first"))
  loo, _ = contrastive_loss(z, present, _meta(4), _objective(pair_strategy="leave_one_out"))
  np.testing.assert_allclose(first, loo, rtol=1e-5)  # two modalities: the other IS the rest
  z3 = jnp.asarray(_unit(rng.normal(size=(4, 3, 5, 8))))
  loo3, _ = contrastive_loss(z3, jnp.ones((4, 3, 5), bool), _meta(4),
                             _objective(pair_strategy="leave_one_out"))
  expect = np.mean([dash_info_nce(z3[:, m], (z3.sum(1) - z3[:, m]) / 2, *plain_weights(4), 0.2, 0.1)
                    for m in range(3)])
  np.testing.assert_allclose(loo3, expect, rtol=1e-5)
  with pytest.raises(ValueError, match="exactly the two"):
    contrastive_loss(z3, jnp.ones((4, 3, 5), bool), _meta(4), _objective(pair_strategy="pair_first"))


def test_all_tokens_never_uses_same_recording_tokens_as_plain_negatives():
  rng = np.random.default_rng(4)
  B, W = 3, 4
  z = _unit(rng.normal(size=(B, 2, W, 8)))
  present = jnp.ones((B, 2, W), bool)
  loss, _ = contrastive_loss(jnp.asarray(z), present, _meta(B),
                             _objective(negatives="all_tokens", pair_strategy="pair_first"))
  # Reference: each token against the tokens of the OTHER recordings only (plus its positive).
  za, zb = z[:, 0].reshape(B * W, 8), z[:, 1].reshape(B * W, 8)
  rec = np.repeat(np.arange(B), W)
  total = 0.0
  for i in range(B * W):
    keep = (rec != rec[i]) | (np.arange(B * W) == i)
    for q, keys in ((za[i], zb), (zb[i], za)):
      logits = keys[keep] @ q / 0.2
      pos = int(np.flatnonzero(np.flatnonzero(keep) == i)[0])
      total += 0.5 * (np.log(np.exp(logits).sum()) - logits[pos])
  np.testing.assert_allclose(float(loss), total / (B * W), rtol=1e-5)


def _reference(za, zb, keep_fn, valid=None):
  """Symmetric InfoNCE of each valid token against the valid tokens `keep_fn(i)` allows."""
  valid = np.ones(len(za), bool) if valid is None else valid
  total = 0.0
  for i in np.flatnonzero(valid):
    keep = keep_fn(i) & valid
    for q, keys in ((za[i], zb), (zb[i], za)):
      logits = keys[keep] @ q / 0.2
      pos = int(np.flatnonzero(np.flatnonzero(keep) == i)[0])
      total += 0.5 * (np.log(np.exp(logits).sum()) - logits[pos])
  return total / valid.sum()


@pytest.mark.parametrize("negatives", ["within_window", "every_token"])
def test_within_window_and_every_token_negatives(negatives):
  rng = np.random.default_rng(5)
  B, W = 3, 4
  z = _unit(rng.normal(size=(B, 2, W, 8)))
  present = np.ones((B, 2, W), bool)
  present[1, 0, 2] = False  # one token missing in one modality: neither a row nor a negative
  loss, _ = contrastive_loss(jnp.asarray(z), jnp.asarray(present), _meta(B),
                             _objective(negatives=negatives, pair_strategy="pair_first"))
  za, zb = z[:, 0].reshape(B * W, 8), z[:, 1].reshape(B * W, 8)
  rec = np.repeat(np.arange(B), W)
  keep = (lambda i: rec == rec[i]) if negatives == "within_window" else (
      lambda i: np.ones(B * W, bool))
  valid = (present[:, 0] & present[:, 1]).reshape(-1)
  np.testing.assert_allclose(float(loss), _reference(za, zb, keep, valid), rtol=1e-5)
  with pytest.raises(ValueError, match="needs objective.loss='info_nce'"):
    from sleepjax.objectives import infonce  # pylint: disable=g-import-not-at-top
    infonce.check(_objective(negatives=negatives, loss="dash"))


def test_aligned_pairs_have_low_loss_and_perfect_retrieval():
  z = _unit(np.random.default_rng(1).normal(size=(16, 1, 32)))
  zz = jnp.asarray(np.stack([z, z], 1))
  loss, m = contrastive_loss(zz, jnp.ones((16, 2, 1), bool), _meta(16),
                             _objective(temperature=0.05, pair_strategy="pair_first"))
  shuffled = dash_info_nce(z, z[::-1], *plain_weights(16), 0.05, 0.1)
  assert m["retrieval_top1"] == 1.0 and loss < 0.1 < shuffled


@pytest.mark.parametrize("negatives", ["per_step", "all_tokens", "within_window", "every_token"])
@pytest.mark.parametrize("strategy", ["all_pairs", "leave_one_out"])
def test_pairs_computed_together_equal_one_pair_at_a_time(strategy, negatives):
  """Every pair goes through one traced body (batched or looped): loss and retrieval equal the
  mean over pairs of each pair's own loss, with partly missing modalities."""
  from sleepjax.objectives import dash, infonce  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  B, M, W = 4, 4, 3
  z = jnp.asarray(_unit(rng.normal(size=(B, M, W, 8))))
  present = rng.random((B, M, W)) > 0.3
  present[:, 3] = False  # a modality absent everywhere: its pairs are unusable
  meta = {"age": rng.uniform(20, 70, B), "sex": rng.integers(0, 2, B),
          "site": rng.integers(0, 2, B), "recording": np.array([0, 0, 1, 2])}
  objective = _objective(negatives=negatives, pair_strategy=strategy,
                         loss="dash" if negatives in ("per_step", "all_tokens") else "info_nce")
  # jitted, both sides: eager, every op of the loss compiles on its own (most of the test's time)
  loss, metrics = jax.jit(lambda z, p: contrastive_loss(z, p, meta, objective))(
      z, jnp.asarray(present))

  w, h = infonce.negative_weights(meta, B, W, objective)
  @jax.jit
  def one(za, zb, valid):
    if negatives in ("all_tokens", "every_token"):
      za, zb, valid = za.reshape(B * W, 1, 8), zb.reshape(B * W, 1, 8), valid.reshape(B * W, 1)
    elif negatives == "within_window":
      za, zb, valid = za.swapaxes(0, 1), zb.swapaxes(0, 1), valid.T
    return (*dash.dash_info_nce_with_accuracy(za, zb, w, h, 0.2, 0.1, valid), valid.any())
  weight = present.astype(np.float32)
  if strategy == "all_pairs":
    terms = [one(z[:, a], z[:, b], present[:, a] & present[:, b])
             for a in range(M) for b in range(a + 1, M)]
  else:
    others = weight.sum(1, keepdims=True) - weight
    terms = [one(z[:, m], (np.einsum("bmwp,bmw->bwp", np.asarray(z), weight)
                           - np.asarray(z[:, m]) * weight[:, m, :, None])
                 / np.maximum(others[:, m], 1)[..., None], present[:, m] & (others[:, m] > 0))
             for m in range(M)]
  usable = np.array([bool(t[2]) for t in terms])
  assert 0 < usable.sum() < len(terms)
  np.testing.assert_allclose(float(loss), np.mean([float(t[0]) for t in terms if t[2]]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["retrieval_top1"]),
                             np.mean([float(t[1]) for t in terms if t[2]]), rtol=1e-5)


@pytest.mark.parametrize("negatives", ["per_step", "all_tokens"])
def test_the_loss_program_does_not_grow_with_the_pairs(negatives):
  """21 pairs at seven modalities trace to the program of 3 pairs at three: compile time and
  kernel count stay those of one pair."""
  def equations(M):
    z = jnp.ones((4, M, 3, 8))
    jaxpr = jax.make_jaxpr(lambda z: contrastive_loss(
        z, jnp.ones((4, M, 3), bool), _meta(4), _objective(negatives=negatives)))(z)
    return len(jaxpr.jaxpr.eqns)
  assert equations(7) == equations(3)
