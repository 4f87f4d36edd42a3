"""GradCache accumulation: k micro-batches give the single-batch loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax import sharding
from sleepjax.bench import step as bench_step
from sleepjax.data import pipeline
from sleepjax.families import get_family
from sleepjax.train import gradcache, state as state_lib
from sleepjax.train.optim import make_optimizer


def _hard_batch(config, modalities: dict, B: int, presence: str) -> dict:
  """A batch that exercises every row-coupling path: absent epochs, missing age and sex, and
  same-night rows split across micro-batches (rows 0 and 1: i::k) and devices (rows 0 and B-1).
  `presence`: "full", or "alternating" (even rows carry eeg+ecg, odd rows ecg+spo2, so a pair
  chosen per micro-batch would differ between them)."""
  batch = bench_step.synthetic_batch(config, modalities, B)
  W = config.data.window_epochs
  for m in modalities:
    batch[f"masks/{m}"][2, W - 1] = False  # an absent epoch
  if presence == "alternating":
    batch["masks/spo2"][0::2] = False
    batch["masks/eeg"][1::2] = False
  batch["age"][3] = np.nan
  batch["sex"][5] = -1
  batch["recording"][1] = batch["recording"][0]
  batch["recording"][B - 1] = batch["recording"][0]
  return batch


def _grads(config, modalities, batch, ks):
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": -1})
  tx, _ = make_optimizer(config.optim, 10)
  graphdef, _, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  params = state_lib.init_state(config, modalities, tx, state_sh, 0).params
  batch = pipeline.to_global(batch, sharding.batch_sharding(mesh))
  family = get_family(config)
  rng = jax.random.key(3)
  grad = jax.jit(lambda p, b, k: gradcache.value_and_grad(family, graphdef, p, b, rng, k),
                 static_argnums=2)
  with jax.set_mesh(mesh):
    return [grad(params, batch, k) for k in ks]


@pytest.mark.parametrize("strategy,presence", [("all_pairs", "full"),
                                               ("pair_first", "alternating")])
def test_accumulated_gradients_equal_single_batch(tiny_config, strategy, presence):
  """2 micro-batches vs the whole batch of 16 on 8 devices: loss to 1e-5, every gradient entry to
  1e-4 relative + 1e-5 of the largest gradient entry (float32 round-off). Mask tokens off (their
  random draws are per micro-batch); DAS-H weights, the BatchNorm head, all negatives and the
  pair_first pair (drawn once per global batch from three modalities) see the whole batch."""
  config = tiny_config.copy_and_resolve_references()
  config.model.mask_fraction = 0.0
  config.data.modality_sampling = "all"
  config.objective.pair_strategy = strategy
  modalities = {"eeg": (128, 2), "ecg": (128, 1), "spo2": (4, 1)}
  batch = _hard_batch(config, modalities, 16, presence)
  ((loss1, metrics1), g1), ((loss2, metrics2), g2) = _grads(config, modalities, batch, (1, 2))
  assert np.isclose(loss1, loss2, rtol=1e-5), (loss1, loss2)
  assert set(metrics1) == set(metrics2)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.allclose(b, a, rtol=1e-4, atol=1e-5 * scale), (np.abs(a - b).max(), scale)


def test_microbatches_must_divide_the_per_device_batch(tiny_config):
  """16 windows on 8 devices is 2 per device: 4 micro-batches would make XLA gather the batch
  across devices to cut it, so it is refused by name (the global batch alone divides by 4)."""
  config = tiny_config.copy_and_resolve_references()
  modalities = {"eeg": (128, 2), "ecg": (128, 1)}
  config.data.modality_sampling = "pair_first"
  batch = bench_step.synthetic_batch(config, modalities, 16)
  with pytest.raises(ValueError, match=r"train.microbatches=4 must divide the per-device batch"):
    _grads(config, modalities, batch, (4,))
  with pytest.raises(ValueError, match=r"train.microbatches=4 .* is 6 per device"):
    gradcache.check_microbatches(24, 4, 4)
  gradcache.check_microbatches(24, 2, 4)


def test_remat_policies_give_the_same_gradients():
  """Every named remat policy recomputes, never changes, the gradients (float32, 1e-5)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sleepjax.models.layers import REMAT_POLICIES  # pylint: disable=g-import-not-at-top
  from sleepjax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 32)), jnp.float32)
  mask = jnp.ones((2, 8), bool).at[1, 5:].set(False)
  grads = {}
  for name in REMAT_POLICIES:
    with nnx.use_eager_sharding(False):
      model = Transformer(32, 2, 4, 64, dtype=jnp.float32, rngs=nnx.Rngs(0), remat=name)
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.square(nnx.merge(graphdef, p)(x, mask)).mean()  # pylint: disable=cell-var-from-loop
    grads[name] = jax.jit(jax.grad(loss))(params)
  for name, g in grads.items():
    for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(g)):
      assert np.allclose(a, b, rtol=1e-5, atol=1e-7), name


def test_bfloat16_micro_batch_gradients_are_summed_in_float32(tiny_config):
  """Under model.param_dtype=bfloat16 the step differentiates a bf16 cast of the weights; the k
  micro-batch gradients must still be summed in float32 (traced only, no compile)."""
  config = tiny_config.copy_and_resolve_references()
  config.data.modality_sampling = "pair_first"
  modalities = {"eeg": (128, 2), "ecg": (128, 1)}
  tx, _ = make_optimizer(config.optim, 10)
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": -1})
  graphdef, abstract, _ = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  params_bf16 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16), abstract.params)
  batch = pipeline.nest(bench_step.synthetic_batch(config, modalities, 16))
  family = get_family(config)
  _, grads = jax.eval_shape(
      lambda p, b: gradcache.value_and_grad(family, graphdef, p, b, jax.random.key(0), 2),
      params_bf16, batch)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
