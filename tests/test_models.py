import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.train.state import build_model

MODALITIES = {"eeg": (128, 2), "spo2": (4, 1)}


def _batch(rng, B=2, W=3):
  signals = {m: jnp.asarray(rng.normal(size=(B, W, c, r * 30)), jnp.float16)
             for m, (r, c) in MODALITIES.items()}
  masks = {m: jnp.ones((B, W, c), bool) for m, (r, c) in MODALITIES.items()}
  return signals, masks


def test_shapes_and_unit_projections(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(0))
  out = model(signals, masks)
  d, p = tiny_config.model.width, tiny_config.model.proj_dim
  assert out["tokens"].shape == (2, 2, 3, d) and out["fused"].shape == (2, 3, d)
  assert out["z"].shape == (2, 2, 3, p) and out["present"].shape == (2, 2, 3)
  np.testing.assert_allclose(jnp.linalg.norm(out["z"], axis=-1), 1.0, rtol=1e-4)


def test_absent_channels_and_modalities_are_masked(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  rng = np.random.default_rng(1)
  signals, masks = _batch(rng)
  masks["eeg"] = masks["eeg"].at[:, :, 1].set(False)  # second EEG channel missing
  masks["spo2"] = jnp.zeros_like(masks["spo2"])  # SpO2 missing altogether
  out = model(signals, masks)
  noisy = dict(signals, eeg=signals["eeg"].at[:, :, 1].set(100.0), spo2=signals["spo2"] + 50.0)
  out2 = model(noisy, masks)
  # Whatever the absent sensors hold cannot reach any output.
  np.testing.assert_allclose(out["fused"], out2["fused"], atol=1e-5)
  assert not out["present"][:, 1].any()
  # With SpO2 absent, the fused embedding is the EEG token alone.
  np.testing.assert_allclose(out["fused"], out["tokens"][:, 0], atol=1e-5)


def test_jit_matches_eager(tiny_config):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = build_model(tiny_config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(2))
  graphdef, params = nnx.split(model)
  jitted = jax.jit(lambda p, s, m: nnx.merge(graphdef, p)(s, m)["z"])(params, signals, masks)
  np.testing.assert_allclose(jitted, model(signals, masks)["z"], atol=1e-5)
