"""LoRA for staging fine-tuning: the backbone stays bitwise frozen, adapters train, and the merged
weights W + (alpha / r) · a b give the adapter's own forward."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleepjax import sharding
from sleepjax.evaluate import embed as embed_lib, finetune
from sleepjax.train import lora
from sleepjax.train.state import build_model

MODALITIES = {"eeg": (128, 2), "ecg": (128, 1)}


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def model_params(tiny_config):
  model = build_model(tiny_config, MODALITIES, seed=0)
  return nnx.split(model, nnx.Param)


def test_adapters_cover_the_targets_and_start_at_the_frozen_model(model_params):
  _, params = model_params
  adapters = lora.init(params, 4, ("q", "k", "v"), jax.random.key(0))
  depth = len([k for k in _leaves(params) if k.endswith("['attn']['q'].value")])
  assert len(adapters) == 3 * depth and all("['attn']" in k for k in adapters)
  a = next(iter(adapters.values()))
  assert a["a"].shape[-1] == 4 and a["b"].shape[-2] == 4
  merged = lora.merge(params, adapters, 16.0, 4)  # b = 0: exactly the frozen model
  for k, x in _leaves(merged).items():
    assert x.tobytes() == _leaves(params)[k].tobytes(), k
  with pytest.raises(ValueError, match="targets"):
    lora.init(params, 4, ("query",), jax.random.key(0))


def test_merged_weights_equal_the_adapter_forward(model_params):
  graphdef, params = model_params
  rank, alpha = 2, 16.0
  adapters = lora.init(params, rank, ("q", "k", "v"), jax.random.key(0))
  rng = np.random.default_rng(0)
  adapters = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape), adapters)
  merged = lora.merge(params, adapters, alpha, rank)
  flat = _leaves(params)
  x = jnp.asarray(rng.standard_normal((2, 5, flat[next(iter(adapters))].shape[0])), jnp.float32)
  for path, adapter in adapters.items():  # each projection: x W + s (x a) b == x (W + s a b)
    unmerged = lora.project(x, flat[path], adapter, alpha / rank)
    folded = jnp.einsum("btd,dhk->bthk", x, _leaves(merged)[path])
    np.testing.assert_allclose(unmerged, folded, rtol=1e-4, atol=1e-5)
  # the whole model: the merged checkpoint moves the embedding the adapters move it by
  signals = {m: jnp.asarray(rng.normal(size=(2, 3, c, r * 30)), jnp.float32)
             for m, (r, c) in MODALITIES.items()}
  masks = {m: jnp.ones((2, 3, c), bool) for m, (r, c) in MODALITIES.items()}
  base = nnx.merge(graphdef, params)(signals, masks)["fused"]
  tuned = nnx.merge(graphdef, merged)(signals, masks)["fused"]
  assert float(jnp.abs(tuned - base).max()) > 1e-3


def _ctx(tiny_config, steps):
  """The slice of an evaluation context `finetune.train_head` reads: two labelled nights."""
  config = tiny_config.copy_and_resolve_references()
  config.eval.finetune_steps = steps
  config.eval.finetune_lora_alpha = 16.0
  config.eval.finetune_lora_targets = ("q", "k", "v")
  mesh = sharding.make_mesh(config.mesh)
  B = config.data.global_batch
  rng = np.random.default_rng(1)
  batch = {f"signals/{m}": rng.normal(size=(B, 3, c, r * 30)).astype(np.float32)
           for m, (r, c) in MODALITIES.items()}
  batch |= {f"masks/{m}": np.ones((B, 3, c), bool) for m, (r, c) in MODALITIES.items()}
  batch |= {"stage": rng.integers(0, 5, (B, 3)).astype(np.int32),
            "recording": np.arange(B, dtype=np.int32) % 2,
            "epoch_index": np.tile(np.arange(3, dtype=np.int32), (B, 1))}
  return types.SimpleNamespace(config=config, mesh=mesh, recording_ids=["r0", "r1"],
                               manifest={"sites": ["site-a"]}, split=lambda s: s,
                               batches=lambda _: [batch])


def test_lora_steps_leave_the_backbone_bitwise_frozen(tiny_config, model_params):
  graphdef, params = model_params
  ctx = _ctx(tiny_config, steps=3)
  encoder = embed_lib.Encoder("pretrained", graphdef, params,
                              embed_lib.embed_function(ctx.config))
  out, head, adapters = finetune.train_head(ctx, encoder, freeze_tokenizers=True, fraction=1.0,
                                            seed=0, lora_rank=2)
  before, after = _leaves(params), _leaves(out)
  assert before.keys() == after.keys()
  for k in before:
    assert before[k].tobytes() == after[k].tobytes(), k
  assert any(np.abs(np.asarray(a["b"])).max() > 0 for a in adapters.values())  # adapters trained
  assert lora.count(adapters) < 0.2 * lora.count(params)
  # without LoRA the same steps move the encoder (the tokenizers stay frozen)
  moved, _, none = finetune.train_head(ctx, encoder, freeze_tokenizers=True, fraction=1.0, seed=0)
  after = _leaves(moved)
  assert none is None
  assert all(before[k].tobytes() == after[k].tobytes() for k in before if "tokenizers" in k)
  assert any(before[k].tobytes() != after[k].tobytes() for k in before if "['attn']" in k)
