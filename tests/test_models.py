import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleepjax.families import get_family
from sleepjax.models.layers import gelu, rope
from sleepjax.models.transformer import Attention
from sleepjax.models.sleep2vec import SoftmaxGate
from sleepjax.train.state import build_model

MODALITIES = {"eeg": (128, 2), "spo2": (4, 1)}


def _batch(rng, B=2, W=3, modalities=MODALITIES):
  signals = {m: jnp.asarray(rng.normal(size=(B, W, c, r * 30)), jnp.float16)
             for m, (r, c) in modalities.items()}
  masks = {m: jnp.ones((B, W, c), bool) for m, (r, c) in modalities.items()}
  return signals, masks


def _config(tiny_config, **model):
  config = tiny_config.copy_and_resolve_references()
  config.model.update(model)
  return config


# The tests' model calls jitted: eager, each op of a forward compiles on its own, most of these
# tests' time (`test_jit_matches_eager` holds that the two agree).
@nnx.jit
def _forward(model, signals, masks):
  return {k: v for k, v in model(signals, masks).items() if k != "names"}


@functools.partial(nnx.jit, static_argnames="mask_fraction")
def _encode(model, signals, masks, rng=None, mask_fraction=0.0):
  out = model.encode(signals, masks, rng=rng, mask_fraction=mask_fraction)
  return {k: v for k, v in out.items() if k != "names"}


def test_shapes_and_unit_projections(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(0))
  out = _forward(model, signals, masks)
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
  out = _forward(model, signals, masks)
  noisy = dict(signals, eeg=signals["eeg"].at[:, :, 1].set(100.0), spo2=signals["spo2"] + 50.0)
  out2 = _forward(model, noisy, masks)
  # Whatever the absent sensors hold cannot reach any output.
  np.testing.assert_allclose(out["fused"], out2["fused"], atol=1e-5)
  assert not out["present"][:, 1].any()
  # With SpO2 absent, the fused embedding is the EEG token alone.
  np.testing.assert_allclose(out["fused"], out["tokens"][:, 0], atol=1e-5)


@pytest.mark.parametrize("norm,tokenizer", [("pre", "epoch"), ("post", "epoch"), ("pre", "patch")])
def test_masked_epochs_change_nothing_in_present_tokens(tiny_config, norm, tokenizer):
  """Absent epochs take no part in attention: their values cannot reach present tokens."""
  model = build_model(_config(tiny_config, norm=norm, signal_tokenizer=tokenizer), MODALITIES, seed=0)
  rng = np.random.default_rng(2)
  signals, masks = _batch(rng, B=2, W=6)
  absent_BxW = np.zeros((2, 6), bool)
  absent_BxW[0, [1, 4]] = absent_BxW[1, 0] = True
  masks = {m: jnp.where(absent_BxW[..., None], False, v) for m, v in masks.items()}
  out = _encode(model, signals, masks)
  noisy = {m: jnp.where(absent_BxW[..., None, None], 1e3 * rng.normal(size=v.shape), v)
           for m, v in signals.items()}
  out2 = _encode(model, noisy, masks)
  present = ~absent_BxW
  for i in range(len(MODALITIES)):
    np.testing.assert_allclose(out["tokens"][:, i][present], out2["tokens"][:, i][present],
                               atol=1e-5)
  # The same change in a present epoch does move the other present tokens (attention is live).
  moved = {m: v.at[0, 2].set(3.0) for m, v in signals.items()}
  out3 = _encode(model, moved, masks)
  assert np.abs(np.asarray(out3["tokens"][0, 0, 3] - out["tokens"][0, 0, 3])).max() > 1e-4


def test_any_subset_of_modalities(tiny_config):
  model = build_model(tiny_config, {**MODALITIES, "ecg": (128, 1)}, seed=0)
  signals, masks = _batch(np.random.default_rng(3))
  out = model.encode(signals, masks)  # only two of the three modalities in the batch
  assert out["names"] == ["eeg", "spo2"] and out["tokens"].shape[1] == 2
  with pytest.raises(ValueError, match="not among"):
    model.encode({**signals, "emg": signals["spo2"]}, {**masks, "emg": masks["spo2"]})


@pytest.mark.parametrize("options", [dict(signal_tokenizer="epoch"), dict(head_norm="layer"),
                                     dict(signal_tokenizer_width=16, norm="post")])
def test_options_build_and_train(tiny_config, options):
  config = _config(tiny_config, **options)
  model = build_model(config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(4), B=4)
  batch = {"signals": signals, "masks": masks, "age": np.array([30.0, 40, 50, 60]),
           "sex": np.array([0, 1, 0, 1]), "site": np.array([0, 0, 1, 1]),
           "recording": np.arange(4)}
  loss, metrics = nnx.jit(get_family(config).loss)(model, batch, jax.random.key(0))
  assert np.isfinite(loss) and 0 <= metrics["retrieval_top1"] <= 1


def test_mask_token_only_in_training(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(5), B=8, W=20)
  plain = np.asarray(_encode(model, signals, masks)["tokens"])
  masked = _encode(model, signals, masks, rng=jax.random.key(0), mask_fraction=0.15)["tokens"]
  assert np.abs(np.asarray(masked) - plain).max() > 1e-3
  unmasked = _encode(model, signals, masks, rng=jax.random.key(0), mask_fraction=0.0)["tokens"]
  np.testing.assert_array_equal(np.asarray(unmasked), plain)


def test_attention_heads_split_whole(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  attn = model.encoder.blocks[0].attn
  d, heads = tiny_config.model.width, tiny_config.model.heads
  assert attn.q.value.shape == (d, heads, d // heads)
  assert attn.q.out_sharding == ("embed", "heads", "kv")
  assert attn.out.out_sharding == ("heads", "kv", "embed")


def test_softmax_gate_ignores_absent_modalities():
  with nnx.use_eager_sharding(False):
    gate = SoftmaxGate(("eeg", "ecg", "spo2"), 4, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3, 5, 4)), jnp.float32)
  present = np.ones((2, 3, 5), bool)
  present[:, 1] = False
  fused = gate(x, jnp.asarray(present))
  fused2 = gate(x.at[:, 1].set(1e3), jnp.asarray(present))
  np.testing.assert_allclose(fused, fused2, atol=1e-5)
  only = np.zeros((2, 3, 5), bool)
  only[:, 2] = True
  np.testing.assert_allclose(gate(x, jnp.asarray(only)), x[:, 2], atol=1e-5)


def test_jit_matches_eager(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  signals, masks = _batch(np.random.default_rng(7))
  graphdef, params = nnx.split(model)
  jitted = jax.jit(lambda p, s, m: nnx.merge(graphdef, p)(s, m)["z"])(params, signals, masks)
  np.testing.assert_allclose(jitted, model(signals, masks)["z"], atol=1e-5)


def test_bfloat16_residual_stream_stays_close_to_float32(tiny_config):
  """model.residual_dtype=compute keeps the residual stream and norm outputs in bf16 (statistics
  in float32): same parameters, outputs within bf16 round-off of the float32-residual model."""
  signals, masks = _batch(np.random.default_rng(7), B=2, W=6)
  out = {}
  for residual in ("float32", "compute"):
    model = build_model(_config(tiny_config, dtype="bfloat16", residual_dtype=residual),
                        MODALITIES, seed=0)
    out[residual] = _encode(model, signals, masks)["tokens"]
  assert out["float32"].dtype == jnp.float32 and out["compute"].dtype == jnp.bfloat16
  a, b = np.asarray(out["float32"]), np.asarray(out["compute"], np.float32)
  assert not np.array_equal(a, b)  # the option does change the arithmetic
  # Both end in a LayerNorm (unit scale): bf16 carries ~3 significant digits over 1-2 blocks.
  assert np.abs(a - b).max() < 0.05 and np.abs(a - b).mean() < 0.008, (np.abs(a - b).max(), np.abs(a - b).mean())
  with pytest.raises(ValueError, match="residual_dtype"):
    build_model(_config(tiny_config, residual_dtype="float16"), MODALITIES, seed=0)



def test_gelu_keeps_only_its_input_for_the_backward():
  """layers.gelu = jax.nn.gelu (tanh) forward; its gradient matches autodiff's in float32, is
  within bf16 rounding of the float32 gradient for bf16 inputs (computed in float32), and its
  backward saves only the input (autodiff of jax.nn.gelu saves tanh-sized intermediates too)."""
  x32 = 4 * jax.random.normal(jax.random.key(0), (64, 48), jnp.float32)
  np.testing.assert_array_equal(gelu(x32), jax.nn.gelu(x32, approximate=True))
  want = jax.grad(lambda x: jax.nn.gelu(x).sum())(x32)
  # atol: where tanh saturates (|x| ~ 4) the gradient is ~1e-5 and both forms round 1 - tanh^2
  # to ~1e-6 absolute, differently in XLA:CPU's two fusion emitters (a wrong derivative is 1e-2 off)
  tail = 4e-6
  np.testing.assert_allclose(jax.grad(lambda x: gelu(x).sum())(x32), want, rtol=1e-5, atol=tail)
  x16 = x32.astype(jnp.bfloat16)
  want16 = jax.grad(lambda x: jax.nn.gelu(x).sum())(x16.astype(jnp.float32))
  got16 = jax.grad(lambda x: gelu(x).astype(jnp.float32).sum())(x16)
  assert got16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got16, np.float32), want16, rtol=2 ** -8, atol=tail)

  def saved(f, x):
    return [leaf.shape for leaf in jax.tree_util.tree_leaves(jax.vjp(f, x)[1])
            if getattr(leaf, "ndim", 0)]
  assert saved(gelu, x16) == [x16.shape]
  assert len(saved(jax.nn.gelu, x16)) > 1  # what the custom backward avoids


def test_attention_equals_the_textbook_form_with_biases():
  """Attention adds q/k biases after RoPE (rotated separately) and folds v's bias into the output
  bias; with non-zero biases and masked keys it equals softmax(rope(xWq + bq) rope(xWk + bk)^T)
  (xWv + bv) Wo + bo computed directly."""
  d, heads, B, T = 32, 4, 2, 6
  with nnx.use_eager_sharding(False):
    att = Attention(d, heads, dtype=jnp.float32, rngs=nnx.Rngs(0))
  keys = iter(jax.random.split(jax.random.key(1), 8))
  for name in ("q_bias", "k_bias", "v_bias", "out_bias"):
    getattr(att, name).value = jax.random.normal(next(keys), (d,))
  x = jax.random.normal(next(keys), (B, T, d))
  present = jnp.array([[1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]], bool)
  got = att(x, present)

  hk = (heads, d // heads)
  proj = lambda w, b: jnp.einsum("btd,dhk->bthk", x, w.value) + b.value.reshape(hk)
  pos = jnp.arange(T)
  q, k = rope(proj(att.q, att.q_bias), pos), rope(proj(att.k, att.k_bias), pos)
  v = proj(att.v, att.v_bias)
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(d // heads)
  allowed = present[:, None, None, :] | jnp.eye(T, dtype=bool)
  p = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  want = jnp.einsum("bhqs,bshk,hkd->bqd", p, v, att.out.value) + att.out_bias.value
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scanned_blocks_match_the_loop():
  """model.scan_blocks: the loop's parameters stacked on a leading `layers` axis give the same
  outputs and gradients under nnx.scan (remat and dropout inside), and the stacked parameters keep
  their logical axes (sharded like the loop's, the new axis over no mesh axis)."""
  from sleepjax import sharding  # pylint: disable=g-import-not-at-top
  from sleepjax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  kw = dict(dtype=jnp.float32, norm="post", remat="full", dropout=0.1, attention_dropout=0.1)
  with nnx.use_eager_sharding(False):
    loop = Transformer(16, 3, 2, 32, rngs=nnx.Rngs(0), **kw)
    scan = Transformer(16, 3, 2, 32, rngs=nnx.Rngs(0), scan=True, **kw)
  loop_blocks = nnx.to_pure_dict(nnx.state(loop.blocks))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[loop_blocks[i] for i in range(3)])
  scan_blocks = nnx.state(scan.blocks)
  nnx.replace_by_pure_dict(scan_blocks, stacked)
  nnx.update(scan.blocks, scan_blocks)
  nnx.update(scan, nnx.state(loop, nnx.Not(nnx.PathContains("blocks"))))

  q = nnx.state(scan.blocks, nnx.Param)["attn"]["q"]
  assert q.shape == (3, 16, 2, 8) and q.out_sharding == ("layers", "embed", "heads", "kv")
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2, "dcn_data": -1})
  spec = sharding.logical_to_mesh(nnx.state(scan.blocks, nnx.Param), mesh)["attn"]["q"].spec
  assert tuple(spec) == (None, "fsdp", "tensor", None)

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  present = jnp.asarray([[1, 1, 0, 1, 1], [1, 0, 0, 0, 1]], bool)
  w = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)

  @nnx.jit
  def loss_and_grad(model, key):
    return nnx.value_and_grad(lambda m: (m(x, present, key) * w).sum())(model)

  for key in (None, jax.random.key(1)):  # evaluation, training (dropout)
    (loss_l, grad_l), (loss_s, grad_s) = loss_and_grad(loop, key), loss_and_grad(scan, key)
    np.testing.assert_allclose(loss_s, loss_l, rtol=1e-5)
    grad_l, grad_s = nnx.to_pure_dict(grad_l), nnx.to_pure_dict(grad_s)
    grad_l["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                    *[grad_l["blocks"][i] for i in range(3)])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5),
                 grad_l, grad_s)
