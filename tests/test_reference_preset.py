"""The reference presets (configs/sleep2vec.py:dense_reference / large_reference) reproduce the
published sleep2vec encoder (JinZr/sleep2vec: sundial tokenizers, RoFormer): parameter count,
shapes, post-LN with eps 1e-12, and dropout that acts in training only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleepjax.cli import load_config
from sleepjax.families import get_family
from sleepjax.models.transformer import Attention
from sleepjax.train import gradcache, state as state_lib
from tests.conftest import REPO

# The reference's nine pretraining inputs: four 3840-sample channels, five 120-sample ones.
NINE = {"eeg": (128, 1), "eog": (128, 1), "emg": (128, 1), "ecg": (128, 1), "heart_rate": (4, 1),
        "spo2": (4, 1), "airflow": (4, 1), "nasal_pressure": (4, 1), "resp_effort": (4, 1)}
SMALL = {"eeg": (128, 1), "spo2": (4, 1)}


def _reference_params(hidden, layers, intermediate, tokenizer_dim, head_hidden, out_dim=128):
  """`sum(p.numel() for p in Sleep2vecPretrainModel(cfg).parameters())` of the reference code
  (sleep2vec/pretrain_model.py, transformers' RoFormerModel, vocab_size 1), module by module."""
  d, dt = hidden, tokenizer_dim
  total = 0
  for rate, channels in NINE.values():  # SundialTokenizer: hidden, output, residual, LayerNorm
    n_in = channels * rate * 30
    total += (n_in * 2 * dt + 2 * dt) + (2 * dt * dt + dt) + (n_in * dt + dt) + 2 * dt
  total += len(NINE) * dt  # mask_embed: one vector per channel, at the tokenizer width
  total += dt * d + d  # embedding_projection
  # RoFormerEmbeddings: word_embeddings [vocab 1, d], token_type_embeddings [2, d], LayerNorm.
  # (The sinusoidal position table is a buffer, not a parameter.)
  total += d + 2 * d + 2 * d
  layer = 4 * (d * d + d) + 2 * d  # query, key, value, attention output dense; its LayerNorm
  layer += (d * intermediate + intermediate) + (intermediate * d + d) + 2 * d  # MLP; LayerNorm
  total += layers * layer
  # SimCLRProjectionHead: fc1 (no bias), BatchNorm, fc2 (no bias), BatchNorm.
  total += d * head_hidden + 2 * head_hidden + head_hidden * out_dim + 2 * out_dim
  return total


@pytest.mark.parametrize("preset,shape,published", [
    ("dense_reference", (768, 12, 3072, 768, 768), 133_775_872),
    ("large_reference", (1024, 16, 3072, 768, 768), 217_084_928)])
def test_reference_presets_have_the_published_parameter_count(preset, shape, published):
  """The reference's count less 3 * width entries that cannot change its function: the unused
  vocabulary-of-one word embedding (the encoder gets inputs_embeds), the unused token type 1,
  and token type 0, a constant added right after embedding_projection's bias (the same function
  as that bias alone)."""
  assert _reference_params(*shape) == published  # the derivation, written out once
  config = load_config(f"{REPO / 'configs' / 'sleep2vec.py'}:{preset}")
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config, NINE, 0))
  assert state_lib.count_params(nnx.state(abstract, nnx.Param)) == published - 3 * shape[0]


def test_dense_reference_forward_shapes():
  config = load_config(f"{REPO / 'configs' / 'sleep2vec.py'}:dense_reference")
  graphdef, params = nnx.split(nnx.eval_shape(lambda: state_lib.build_model(config, NINE, 0)))
  B, W = 2, config.data.window_epochs
  signals = {m: jax.ShapeDtypeStruct((B, W, c, r * 30), jnp.float32) for m, (r, c) in NINE.items()}
  masks = {m: jax.ShapeDtypeStruct((B, W, c), jnp.bool_) for m, (r, c) in NINE.items()}
  arrays = lambda out: {k: out[k] for k in ("tokens", "z", "fused", "present")}
  out = jax.eval_shape(lambda p, s, k: arrays(nnx.merge(graphdef, p)(s, k)), params, signals, masks)
  assert out["tokens"].shape == (B, 9, W, 768) and out["fused"].shape == (B, W, 768)
  assert out["z"].shape == (B, 9, W, 128) and out["present"].shape == (B, 9, W)


def _small(**model):
  """dense_reference's layout at a test's size (float32, XLA attention)."""
  config = load_config(f"{REPO / 'configs' / 'sleep2vec.py'}:dense_reference")
  config.model.update(dict(width=32, depth=2, heads=4, mlp=64, proj_hidden=0, proj_dim=16,
                           dtype="float32", residual_dtype="float32", attention="xla"))
  config.model.update(model)
  return config


def _batch(B=4, W=6, seed=0):
  rng = np.random.default_rng(seed)
  signals = {m: jnp.asarray(rng.normal(size=(B, W, c, r * 30)), jnp.float32)
             for m, (r, c) in SMALL.items()}
  masks = {m: jnp.ones((B, W, c), bool) for m, (r, c) in SMALL.items()}
  return {"signals": signals, "masks": masks, "age": jnp.linspace(30, 70, B),
          "sex": jnp.arange(B) % 2, "site": jnp.arange(B) % 2, "recording": jnp.arange(B)}


@pytest.fixture(scope="module")
def small():
  """(config, model, jitted encode(params, batch, rng or None) -> tokens), mask tokens off."""
  config = _small(mask_fraction=0.0)
  model = state_lib.build_model(config, SMALL, 0)
  graphdef = nnx.graphdef(model)
  encode = jax.jit(lambda p, b, rng: nnx.merge(graphdef, p).encode(
      b["signals"], b["masks"], rng=rng, mask_fraction=0.0)["tokens"])
  return config, model, lambda b, rng=None: np.asarray(encode(nnx.state(model), b, rng))


def test_reference_layout_is_post_ln_with_eps_1e12(small):
  _, model, encode = small
  norms = [model.encoder.input_norm] + [n for b in model.encoder.blocks for n in (b.norm1, b.norm2)]
  assert model.encoder.norm is None and all(b.post for b in model.encoder.blocks)
  assert {n.epsilon for n in norms} == {1e-12}
  assert model.modality_embed is None and model.token_proj is not None
  # Post-LN: every output token is a LayerNorm's (unit gain, zero bias at init).
  tokens = encode(_batch()).astype(np.float64)
  np.testing.assert_allclose(tokens.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(tokens.std(-1), 1.0, atol=1e-4)


def test_dropout_only_in_training(small):
  """No rng (evaluation, `family.embed`): deterministic. An rng (training): a fresh mask per key,
  the same mask for the same key. Mask tokens off, so dropout is the only randomness."""
  config, model, encode = small
  batch = _batch()
  embedded = get_family(config).embed(model, batch)["per_modality"]
  np.testing.assert_allclose(encode(batch), np.asarray(embedded), atol=1e-5)  # jit vs eager
  np.testing.assert_array_equal(encode(batch), encode(batch))
  a, b = encode(batch, jax.random.key(0)), encode(batch, jax.random.key(1))
  assert np.abs(a - b).max() > 1e-2 and np.abs(a - encode(batch)).max() > 1e-2
  np.testing.assert_array_equal(a, encode(batch, jax.random.key(0)))


def test_tokenizer_dropout_on_its_mlp_branch_in_training_only(small):
  _, model, _ = small
  batch = _batch()
  token = lambda rng=None: np.asarray(model.token(0, batch["signals"], batch["masks"], rng))
  np.testing.assert_array_equal(token(), token())
  assert np.abs(token(jax.random.key(0)) - token()).max() > 1e-2


def _attention(rate):
  with nnx.use_eager_sharding(False):
    attn = Attention(16, 2, dtype=jnp.float32, rngs=nnx.Rngs(0), dropout=rate)
  rng = np.random.default_rng(1)
  for bias in (attn.q_bias, attn.k_bias, attn.v_bias, attn.out_bias):
    bias.value = jnp.asarray(rng.normal(size=bias.value.shape), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  present = jnp.asarray([[1, 1, 0, 1, 1], [1, 0, 0, 0, 1]], bool)
  return attn, x, present


def test_attention_dropout_path_is_the_fused_attention_when_nothing_drops():
  """Training with attention dropout runs attention written out (v's bias on v, as dropped
  weights no longer sum to one); with a rate too small to drop anything it must equal the
  evaluation path (jax.nn.dot_product_attention, v's bias folded into the output's)."""
  attn, x, present = _attention(1e-9)
  np.testing.assert_allclose(attn(x, present, jax.random.key(0)), attn(x, present), atol=1e-5)
  attn, x, present = _attention(0.5)
  assert np.abs(np.asarray(attn(x, present, jax.random.key(0)) - attn(x, present))).max() > 1e-2


def test_gradcache_gradient_is_the_gradient_of_its_loss_with_dropout(small):
  """GradCache encodes each micro-batch twice (no-grad, then under vjp) with the same key: the
  dropout masks must be the same both times, or its gradient g is not the gradient of the loss L
  it reports. Checked along g: (L(p + e u) - L(p - e u)) / 2e = |g| for u = g / |g| (0.2 %
  apart at e = 1e-4; GradCache's g matched autodiff through its loss to 1e-6 when written). A
  second pass with another key (a mutation tried once) gave 24.2 against |g| = 38.1."""
  config, model, _ = small
  graphdef, params = nnx.split(model)
  batch = _batch(B=8, W=4)
  run = jax.jit(lambda p, rng: gradcache.value_and_grad(get_family(config), graphdef, p, batch,
                                                        rng, 2))
  (loss, _), g = run(params, jax.random.key(0))
  assert abs(float(loss) - float(run(params, jax.random.key(1))[0][0])) > 1e-4  # dropout is live
  norm = float(np.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g))))
  e = 1e-4
  shifted = lambda sign: jax.tree.map(lambda p, x: p + sign * e * x / norm, params, g)
  slope = (run(shifted(1), jax.random.key(0))[0][0] - run(shifted(-1), jax.random.key(0))[0][0])
  np.testing.assert_allclose(float(slope) / (2 * e), norm, rtol=0.05)


@pytest.mark.parametrize("model,match", [
    (dict(attention="cudnn"), r"model.attention='cudnn'.*model.attention_dropout=0.1"),
    (dict(dropout=1.0), r"model.dropout must be in \[0, 1\)"),
    (dict(attention_dropout=-0.1), r"model.attention_dropout must be in \[0, 1\)"),
    (dict(token_proj="sometimes"), r"model.token_proj must be 'auto' or 'always'")])
def test_meaningless_combinations_are_refused(model, match):
  with pytest.raises(ValueError, match=match):
    state_lib.build_model(_small(**model), SMALL, 0)
