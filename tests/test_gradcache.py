"""GradCache accumulation: k micro-batches give the single-batch loss and gradients."""

import jax
import numpy as np

from sleepjax import bench_step, sharding
from sleepjax.data import pipeline
from sleepjax.families import get_family
from sleepjax.train import gradcache, state as state_lib
from sleepjax.train.optim import make_optimizer


def test_accumulated_gradients_equal_single_batch(tiny_config):
  """2 micro-batches vs the whole batch of 16 on 8 devices: loss to 1e-5, every gradient entry to
  1e-4 relative + 1e-5 of the largest gradient entry (float32 round-off; some leaves, e.g. biases
  ahead of a BatchNorm, have analytically zero gradients that come out as ~1e-8 noise). Mask tokens off (their random draws are
  per micro-batch); DAS-H weights, the BatchNorm head and all negatives see the whole batch."""
  config = tiny_config.copy_and_resolve_references()
  config.model.mask_fraction = 0.0
  config.data.modality_sampling = "all"
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  modalities = {"eeg": (128, 2), "ecg": (128, 1), "spo2": (4, 1)}
  tx, _ = make_optimizer(config.optim, 10)
  graphdef, _, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  params = state_lib.init_state(config, modalities, tx, state_sh, 0).params
  batch_sh = sharding.batch_sharding(mesh)
  batch = pipeline.to_global(bench_step.synthetic_batch(config, modalities, 16), batch_sh)
  family = get_family(config)
  rng = jax.random.key(3)
  grad = jax.jit(lambda p, b, k: gradcache.value_and_grad(family, graphdef, p, b, rng, k),
                 static_argnums=2)
  with jax.set_mesh(mesh):
    (loss1, metrics1), g1 = grad(params, batch, 1)
    (loss2, metrics2), g2 = grad(params, batch, 2)
  assert np.isclose(loss1, loss2, rtol=1e-5), (loss1, loss2)
  assert set(metrics1) == set(metrics2)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.allclose(b, a, rtol=1e-4, atol=1e-5 * scale), (np.abs(a - b).max(), scale)


def test_remat_policies_give_the_same_gradients():
  """Every named remat policy recomputes, never changes, the gradients (float32, 1e-5)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sleepjax.models.layers import REMAT_POLICIES, Transformer  # pylint: disable=g-import-not-at-top
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
