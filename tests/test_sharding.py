import jax
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


def test_parameters_and_optimizer_state_are_born_sharded(tiny_config):
  assert jax.device_count() == 8
  config = tiny_config.copy_and_resolve_references()
  config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
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
