"""Explicit train state and its sharded creation: abstract init -> shardings -> jitted init.

Family-agnostic: the model comes from `FAMILIES[config.model.family].build`.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sleepjax import sharding
from sleepjax.families import get_family
from sleepjax.models.layers import DTYPES


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32 key data, so checkpoints hold a plain array
  ema_params: nnx.State  # exponential moving average of params (evaluation uses it)


def model_modalities(manifest: dict, names: list[str]) -> dict[str, tuple[int, int]]:
  return {m: (manifest["modalities"][m]["rate"], len(manifest["modalities"][m]["channels"]))
          for m in names}


def build_model(config, modalities: dict[str, tuple[int, int]], seed: int) -> nnx.Module:
  # Placement comes from jit's out_shardings (see `create`), not from NNX's eager sharding, so the
  # same code builds the model inside or outside a mesh context.
  with nnx.use_eager_sharding(False):
    return get_family(config).build(config, modalities, nnx.Rngs(seed))


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def _init(config, modalities, tx, seed: int) -> TrainState:
  _, params = nnx.split(build_model(config, modalities, seed))
  name = config.model.get("param_dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"model.param_dtype must be one of {sorted(DTYPES)}, got {name!r}")
  # Layers create float32 parameters and cast them to model.dtype for each matmul; storing them
  # in bfloat16 halves parameter, gradient and AdamW-moment memory (the moments follow the
  # parameters' dtype) at the cost of small updates rounding away. The EMA stays float32: its
  # per-step change, (1 - momentum) x the difference, is below bfloat16's resolution.
  params = _cast_floats(params, DTYPES[name])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed + 1)),
                    ema_params=_cast_floats(params, jnp.float32))


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def abstract_state(config, modalities, tx, mesh, seed: int):
  """(graphdef, abstract state carrying the current mesh's shardings, shardings): no compute.

  The abstract state is the target for restoring a checkpoint onto this mesh, whatever mesh wrote
  it; the shardings are the out_shardings of a fresh init.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(config, modalities, seed)))
  abstract = jax.eval_shape(functools.partial(_init, config, modalities, tx, seed))
  shardings = sharding.logical_to_mesh(abstract, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return graphdef, abstract, shardings


def init_state(config, modalities, tx, shardings, seed: int) -> TrainState:
  """A fresh train state, born sharded (jit with out_shardings), never replicated first."""
  return jax.jit(functools.partial(_init, config, modalities, tx, seed), out_shardings=shardings)()
