"""Explicit train state and its sharded creation: abstract init -> shardings -> jitted init.

Family-agnostic: the model comes from `FAMILIES[config.model.family].build`.
"""

import contextlib
import functools
import threading

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax._src import core as jax_core  # Tracer.sharding: see _cheap_sharding_probes

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


def _no_sharding_on_tracers(tracer):
  raise AttributeError(f"The 'sharding' attribute is not available on {type(tracer).__name__}")


_PROBE_LOCK = threading.Lock()


@contextlib.contextmanager
def _cheap_sharding_probes():
  """NNX's `Variable.set_value` probes `getattr(value, "sharding", None)` on every assignment
  (each `rngs.params()` bumps a counter), and a JAX 0.10 tracer answers with an AttributeError
  whose message first walks every equation traced so far, so tracing a model's construction
  (`abstract_state`, the jitted init) is quadratic in its size: SleepLM-Base's abstract state
  took 43 CPU-s; traced once and without the walk 3.6 (BENCHMARKS.md "The test suite"). While a
  model is built, the probe raises the same AttributeError (getattr's default, as before) without
  the walk. JAX's own fix (Tracer.sharding without the origin message) makes this a no-op; the
  lock keeps concurrent builds from restoring each other's property."""
  with _PROBE_LOCK:
    original = jax_core.Tracer.sharding
    jax_core.Tracer.sharding = property(_no_sharding_on_tracers)
    try:
      yield
    finally:
      jax_core.Tracer.sharding = original


def build_model(config, modalities: dict[str, tuple[int, int]], seed: int) -> nnx.Module:
  # Placement comes from jit's out_shardings (see `create`), not from NNX's eager sharding, so the
  # same code builds the model inside or outside a mesh context.
  with nnx.use_eager_sharding(False), _cheap_sharding_probes():
    return get_family(config).build(config, modalities, nnx.Rngs(seed))


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def param_dtype(config):
  """`model.param_dtype`: the dtype of the weights the step's forward and backward consume."""
  name = config.model.param_dtype
  if name not in DTYPES:
    raise ValueError(f"model.param_dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def compute_params(params, config):
  """The weights the step computes with: the float32 master cast to `model.param_dtype`. The cast
  acts on each device's shard, so under FSDP the all-gathers (and the gradients' reductions)
  move that dtype."""
  dtype = param_dtype(config)
  return params if dtype == jnp.float32 else _cast_floats(params, dtype)


def _first_moment_in(opt_state, dtype):
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return jax.tree.map(lambda s: s._replace(mu=_cast_floats(s.mu, dtype)) if is_adam(s) else s,
                      opt_state, is_leaf=is_adam)


def _init(config, modalities, tx, seed: int) -> TrainState:
  _, params = nnx.split(build_model(config, modalities, seed))
  return _state_around(params, config, tx, seed)


def _state_around(params, config, tx, seed: int) -> TrainState:
  # The parameters are always a float32 master copy: what AdamW updates, the EMA follows and
  # checkpoints hold. Stored in bfloat16, an update below half a bf16 ulp (2^-9 relative) rounds
  # away: at lr 5e-5 two thirds of a fresh 768x3072 kernel never moved and weight decay never
  # acted. `model.param_dtype=bfloat16` instead makes the step compute with a bf16 cast
  # (`compute_params`: half the bytes gathered and reduced under FSDP, bf16 gradients) and stores
  # AdamW's first moment in bf16 (optax's `mu_dtype` practice; the second moment stays float32,
  # its range and the 1/sqrt precision need it). Bytes per parameter held between steps: float32
  # 16 (params, mu, nu, EMA), bfloat16 14; the former bf16 params + moments took 10.
  dtype = param_dtype(config)
  opt_state = tx.init(params)
  if dtype != jnp.float32:
    opt_state = _first_moment_in(opt_state, dtype)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    rng=jax.random.key_data(jax.random.key(seed + 1)), ema_params=params)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def abstract_state(config, modalities, tx, mesh, seed: int):
  """(graphdef, abstract state carrying the current mesh's shardings, shardings): no compute.

  The abstract state is the target for restoring a checkpoint onto this mesh, whatever mesh wrote
  it; the shardings are the out_shardings of a fresh init.
  """
  # The model is traced once (building it is most of the cost of this function): its abstract
  # parameters give the rest of the state without building it again.
  graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config, modalities, seed)))
  abstract = jax.eval_shape(functools.partial(_state_around, config=config, tx=tx, seed=seed),
                            params)
  shardings = sharding.logical_to_mesh(abstract, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return graphdef, abstract, shardings


def init_state(config, modalities, tx, shardings, seed: int) -> TrainState:
  """A fresh train state, born sharded (jit with out_shardings), never replicated first."""
  return jax.jit(functools.partial(_init, config, modalities, tx, seed), out_shardings=shardings)()
