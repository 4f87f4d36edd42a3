"""What the optimizer and the EMA keep: float32 master weights under `model.param_dtype=bfloat16`,
weight decay on matmul kernels only, `train.ema_momentum=0` as no EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sleepjax import families
from sleepjax.families import Family
from sleepjax.train import state as state_lib
from sleepjax.train.optim import make_optimizer
from sleepjax.train.step import ema_momentum, make_train_step

LR = 5e-5  # sleep2vec's peak learning rate
BATCH = {"signals": {"eeg": jnp.ones((8, 2, 1, 3840))}, "masks": {"eeg": jnp.ones((8, 2, 1), bool)}}


class Dense(nnx.Module):
  def __init__(self, rngs):
    self.layer = nnx.Linear(256, 1024, rngs=rngs)  # lecun-normal kernel, as every model's


def _family(loss_of_y):
  """A one-layer family whose loss is `loss_of_y(layer(x))` on fixed inputs."""
  def loss(model, batch, rng):
    del batch, rng
    x_NxI = jax.random.normal(jax.random.key(0), (16, 256))
    return loss_of_y(model.layer(x_NxI)), {}

  return Family(name="dense", build=lambda config, modalities, rngs: Dense(rngs), loss=loss,
                embed=lambda model, batch: {}, flops=lambda *a, **k: 1.0, fields=lambda config: ())


def _setup(monkeypatch, tiny_config, loss_of_y, overrides):
  """(state, jitted step, config) of the real init and train step for a one-layer family;
  `overrides`: {"section.key": value}."""
  monkeypatch.setitem(families.FAMILIES, "dense", _family(loss_of_y))
  config = tiny_config.copy_and_resolve_references()
  config.model.family = "dense"
  config.optim.lr, config.optim.warmup_steps = LR, 0  # step 0 runs at the peak learning rate
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  graphdef, _, shardings = state_lib.abstract_state(config, {"eeg": (128, 1)}, tx, mesh, 0)
  state = state_lib.init_state(config, {"eeg": (128, 1)}, tx, shardings, 0)
  return state, jax.jit(make_train_step(graphdef, tx, schedule, config)), config


def _kernel(state):
  return np.asarray(state.params["layer"]["kernel"].value, np.float32)


def test_ema_momentum_zero_keeps_the_ema_equal_to_the_params(monkeypatch, tiny_config):
  """Base 0 = no EMA: at every step the EMA eval restores is exactly the trained weights."""
  state, step, _ = _setup(monkeypatch, tiny_config, lambda y: jnp.mean((y - 1.0) ** 2),
                          {"train.ema_momentum": 0.0, "optim.lr": 1e-2})
  for _ in range(4):
    state, metrics = step(state, BATCH)
    for p, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
      np.testing.assert_array_equal(e, p)
    assert float(metrics["ema_momentum"]) == 0.0
  assert int(state.step) == 4
  np.testing.assert_array_equal(ema_momentum(np.arange(101), 100, 0.0), np.zeros(101))


def test_bfloat16_params_update_every_entry_of_a_fresh_kernel(monkeypatch, tiny_config):
  """One AdamW step at lr 5e-5 moves ~every entry by ~lr (Adam's first step is lr x sign(g)).
  Stored in bf16, entries above ~0.026 in size (two thirds of a lecun kernel) would not move."""
  state, step, _ = _setup(monkeypatch, tiny_config, lambda y: jnp.mean((y - 1.0) ** 2),
                          {"model.param_dtype": "bfloat16"})
  new, metrics = step(state, BATCH)
  np.testing.assert_allclose(float(metrics["lr"]), LR, rtol=1e-6)
  moved_IxO = np.abs(_kernel(new) - _kernel(state))
  assert np.mean(moved_IxO > 0) > 0.99
  np.testing.assert_allclose(np.median(moved_IxO), LR, rtol=0.05)


def test_bfloat16_weight_decay_shrinks_the_master_weights(monkeypatch, tiny_config):
  """With a zero gradient only weight decay acts: w -> w (1 - lr wd), a 2.5e-6 relative change
  that a bf16 weight (resolution 2^-8) always rounds away."""
  state, step, config = _setup(monkeypatch, tiny_config, lambda y: 0.0 * jnp.sum(y),
                               {"model.param_dtype": "bfloat16"})
  new, _ = step(state, BATCH)
  before, after = _kernel(state), _kernel(new)
  nonzero = before != 0
  assert nonzero.mean() > 0.99 and np.all(np.abs(after[nonzero]) < np.abs(before[nonzero]))
  np.testing.assert_allclose(after, before * (1 - LR * config.optim.weight_decay), rtol=3e-7)


def test_bfloat16_keeps_float32_master_ema_and_second_moment(tiny_config):
  """param_dtype=bfloat16 on the real sleep2vec step: params, EMA and AdamW's second moment stay
  float32 across steps, the first moment is bf16; an unknown dtype is refused."""
  from sleepjax import sharding  # pylint: disable=g-import-not-at-top
  from sleepjax.bench import step as bench_step  # pylint: disable=g-import-not-at-top
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.model.param_dtype = "bfloat16"
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": -1})
  modalities = {"eeg": (128, 2), "spo2": (4, 1)}
  tx, schedule = make_optimizer(config.optim, 10)
  graphdef, _, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  state = state_lib.init_state(config, modalities, tx, state_sh, 0)
  batch = pipeline.to_global(bench_step.synthetic_batch(config, modalities, 16),
                             sharding.batch_sharding(mesh))
  step = jax.jit(make_train_step(graphdef, tx, schedule, config))
  with jax.set_mesh(mesh):
    new, metrics = step(*step(state, batch)[:1], batch)  # step 0's warmup learning rate is 0
  assert np.isfinite(float(metrics["loss"]))
  for s in (state, new):
    assert _float_dtypes(s.params) == _float_dtypes(s.ema_params) == {jnp.dtype(jnp.float32)}
    adam = _adam(s.opt_state)
    assert _float_dtypes(adam.mu) == {jnp.dtype(jnp.bfloat16)}
    assert _float_dtypes(adam.nu) == {jnp.dtype(jnp.float32)}
  config.model.param_dtype = "float16"
  with pytest.raises(ValueError, match="model.param_dtype"):
    state_lib.abstract_state(config, modalities, tx, mesh, 0)


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _adam(opt_state) -> optax.ScaleByAdamState:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return next(x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x))


def _decayed_names(config, modalities) -> dict[str, bool]:
  """Leaf name (ndim >= 2 only) -> whether AdamW decays it, from the real optimizer's update of
  the model's parameter tree (all ones) under a zero gradient: only weight decay moves anything."""
  optim = config.optim.copy_and_resolve_references()
  optim.warmup_steps = 0
  tx, _ = make_optimizer(optim, 10)
  abstract = nnx.state(nnx.eval_shape(lambda: state_lib.build_model(config, modalities, 0)))
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), abstract)
  moved = jax.jit(lambda p: jax.tree.map(
      lambda u: jnp.any(u != 0), tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0]))
  names = {}
  for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(moved(params))):
    if p.ndim >= 2:
      name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
      names.setdefault(name, set()).add(bool(m))
  assert all(len(v) == 1 for v in names.values()), names  # one rule per name
  return {name: v.pop() for name, v in names.items()}


def test_weight_decay_skips_sleep2vec_tokens_and_decays_its_kernels(tiny_config):
  decayed = _decayed_names(tiny_config, {"eeg": (128, 2), "spo2": (4, 1)})
  assert {n for n, d in decayed.items() if not d} == {"mask_token", "modality_embed"}
  assert {"q", "k", "v", "out", "kernel"} <= {n for n, d in decayed.items() if d}


def test_weight_decay_skips_sleeplm_embeddings_and_decays_its_kernels():
  from sleepjax.cli import load_config  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  config = load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny")
  decayed = _decayed_names(config, {"eeg": (128, 2)})
  assert {n for n, d in decayed.items() if not d} == {
      "channel_embed", "embedding", "pos_embed", "prefix", "query"}
  assert {n for n, d in decayed.items() if d} == {"kernel"}
