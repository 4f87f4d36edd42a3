import dataclasses

import jax
import numpy as np
import pytest

from sleepjax import sharding
from sleepjax.train import state as state_lib
from sleepjax.train.optim import make_optimizer


def test_mesh_shape_fills_and_validates():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)


def test_one_slice_mesh_keeps_the_device_order():
  """On one slice (8 CPU devices, or the demo's one) the mesh is the devices in order, as before."""
  for axes in ({"data": -1, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
    mesh = sharding.make_mesh({**axes, "dcn_data": -1})
    shape = sharding.mesh_shape(axes, 8)
    assert mesh.axis_names == sharding.MESH_AXES and mesh.devices.shape == shape
    assert (mesh.devices == np.asarray(jax.devices()).reshape(shape)).all()
  assert sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1},
                            jax.devices()[:1]).devices.shape == (1, 1, 1)
  with pytest.raises(ValueError, match="mesh.dcn_data=2.*1 slice"):
    sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 2})


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
  """What mesh_utils reads of a device: a multislice TPU's slices, on a CPU-only machine."""
  id: int
  slice_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"


def test_multislice_splits_data_across_slices():
  devices = [_FakeDevice(i, i // 4) for i in range(8)]  # two slices of four
  assert sharding.num_slices(devices) == 2
  grid = sharding.device_grid({"data": -1, "fsdp": 2, "tensor": 1, "dcn_data": -1}, devices)
  assert grid.shape == (4, 2, 1)
  slices = np.vectorize(lambda d: d.slice_index)(grid)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # `data` halves = the slices
  grid = sharding.device_grid({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 2}, devices)
  assert [{d.slice_index for d in block.flat} for block in grid] == [{0}, {1}]
  with pytest.raises(ValueError, match="mesh.dcn_data=1.*2 slice"):
    sharding.device_grid({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1}, devices)
  with pytest.raises(ValueError, match="mesh.data=1 is not divisible by mesh.dcn_data=2"):
    sharding.device_grid({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": -1}, devices)


def test_parameters_and_optimizer_state_are_born_sharded(tiny_config):
  assert jax.device_count() == 8
  config = tiny_config.copy_and_resolve_references()
  config.mesh = {"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": -1}
  mesh = sharding.make_mesh(config.mesh)
  tx, _ = make_optimizer(config.optim, 10)
  modalities = {"eeg": (128, 2), "ecg": (128, 1)}
  _, abstract, shardings = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  state = state_lib.init_state(config, modalities, tx, shardings, 0)
  assert abstract.params["encoder"]["blocks"][0]["up"]["kernel"].sharding == (
      state.params["encoder"]["blocks"][0]["up"]["kernel"].sharding)
  up = state.params["encoder"]["blocks"][0]["up"]["kernel"]
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(up.addressable_shards) == 8 and up.addressable_shards[0].data.shape == (
      up.shape[0] // 2, up.shape[1] // 2)
  mu = state.opt_state[1][0].mu["encoder"]["blocks"][0]["up"]["kernel"]  # adam's first moment
  assert mu.sharding.spec == up.sharding.spec


def _losses_on_mesh(config, mesh_axes: dict, steps: int = 3) -> list[float]:
  from sleepjax.bench import step as bench_step  # pylint: disable=g-import-not-at-top
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sleepjax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.mesh = {**mesh_axes, "dcn_data": -1}
  mesh = sharding.make_mesh(config.mesh)
  modalities = {"eeg": (128, 2), "ecg": (128, 1), "spo2": (4, 1)}
  tx, schedule = make_optimizer(config.optim, 10)
  graphdef, _, state_sh = state_lib.abstract_state(config, modalities, tx, mesh, 0)
  state = state_lib.init_state(config, modalities, tx, state_sh, 0)
  batch_sh = sharding.batch_sharding(mesh)
  step = jax.jit(make_train_step(graphdef, tx, schedule, config),
                 in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, sharding.replicated(mesh)))
  losses = []
  with jax.set_mesh(mesh):
    for i in range(steps):
      local = bench_step.synthetic_batch(config, modalities, config.data.global_batch, seed=i)
      state, metrics = step(state, pipeline.to_global(local, batch_sh))
      losses.append(float(metrics["loss"]))
  return losses


def test_data_fsdp_and_tensor_meshes_train_alike(tiny_config):
  """The same 3 steps on a data-parallel, an FSDP and a tensor-parallel mesh of 8 CPU devices give
  the same losses to 1e-4 relative (float32; only the reduction order differs)."""
  config = tiny_config.copy_and_resolve_references()
  config.data.modality_sampling = "all"
  reference = _losses_on_mesh(config, {"data": 8, "fsdp": 1, "tensor": 1})
  for mesh_axes in ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
    losses = _losses_on_mesh(config, mesh_axes)
    assert np.allclose(losses, reference, rtol=1e-4, atol=1e-6), (mesh_axes, losses, reference)


def test_tensor_parallel_block_gathers_no_activations(tiny_config):
  """Heads split whole over `tensor` (Megatron): a block's forward needs all-reduces only, never an
  all-gather of the attention activations."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sleepjax.models.transformer import Block  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2, "dcn_data": -1})
  d, heads, mlp, B, T = 64, 4, 128, 8, 16
  with nnx.use_eager_sharding(False):
    block = Block(d, heads, mlp, dtype=jax.numpy.float32, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)
  params_sh = sharding.logical_to_mesh(params, mesh)
  params = jax.device_put(params, params_sh)
  x_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH))
  x = jax.device_put(np.random.default_rng(0).standard_normal((B, T, d), np.float32), x_sh)
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x), in_shardings=(params_sh, x_sh),
                    out_shardings=x_sh)
  with jax.set_mesh(mesh):
    hlo = forward.lower(params, x).compile().as_text()
  gathers = [line for line in hlo.splitlines() if "all-gather" in line and "=" in line]
  assert not gathers, "\n".join(gathers[:5])
  assert "all-reduce" in hlo  # the row-parallel projections do reduce
