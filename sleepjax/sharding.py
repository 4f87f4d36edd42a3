"""One mesh and one logical-axis rule table.

Parameters and activations are annotated with logical axis names; `RULES` maps them onto the mesh axes
`data`, `fsdp` and `tensor`. The batch is split over (`data`, `fsdp`); weights over `fsdp` (ZeRO-3
style) and `tensor` (Megatron style). Devices are laid out by JAX's topology-aware mesh helpers: on
several TPU slices (multislice) `data` is split across the slices (DCN) and every axis inside one
slice (ICI), so only the gradient all-reduce crosses the slower network.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Weight axes (embed, mlp, heads, ...) and activation axes (activation_*) are named apart: fsdp
# shards a weight's embed dimension while the activations' batch dimension already uses it.
RULES = (
    ("activation_batch", BATCH),
    ("activation_time", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("qkv", None),
    ("kv", None),
    ("patch", None),
    ("features", None),
    ("channels", None),
    ("modality", None),
    ("time", None),
    ("proj", None),
    ("vocab", "tensor"),
    ("recon", None),
    ("layers", None),  # the stacking axis of scanned blocks (model.scan_blocks)
)


def mesh_shape(config, n_devices: int) -> tuple[int, ...]:
  """Mesh sizes from config (`data`, `fsdp`, `tensor`); one of them may be -1 (fills the rest)."""
  sizes = [int(config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"mesh: {n_devices} devices not divisible by {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {n_devices}")
  return tuple(sizes)


def num_slices(devices) -> int:
  """Slices the devices span (TPU multislice); 1 for devices without a `slice_index` (CPU, GPU)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def dcn_shape(config, shape: tuple[int, ...], n_slices: int) -> tuple[int, ...]:
  """The across-slice part of `shape`: `data` over `dcn_data` slices (-1: every slice)."""
  dcn = n_slices if int(config["dcn_data"]) == -1 else int(config["dcn_data"])
  if dcn != n_slices:
    raise ValueError(f"mesh.dcn_data={config['dcn_data']}, but the devices span {n_slices} "
                     f"slice(s): set mesh.dcn_data={n_slices} or -1")
  if shape[0] % dcn:
    raise ValueError(f"mesh.data={shape[0]} is not divisible by mesh.dcn_data={dcn} (the "
                     f"slices): `data` is the axis split across slices")
  return (dcn,) + (1,) * (len(shape) - 1)


def device_grid(config, devices) -> np.ndarray:
  """`devices` arranged as the mesh (`data`, `fsdp`, `tensor`), in topology order.

  One slice: `mesh_utils.create_device_mesh` (physical torus order on TPU, the device order on CPU);
  several: `create_hybrid_device_mesh`, one such block per slice along `data`. Not `jax.make_mesh`:
  it refuses multislice and would make the axes Explicit.
  """
  shape = mesh_shape(config, len(devices))
  n_slices = num_slices(devices)
  dcn = dcn_shape(config, shape, n_slices)
  if n_slices == 1:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  ici = tuple(s // d for s, d in zip(shape, dcn))
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)


def make_mesh(config, devices=None) -> Mesh:
  """The mesh over `devices` (default: every device; compile-only topology devices work too)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(device_grid(config, devices), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_mesh(tree, mesh: Mesh):
  """NamedShardings for a tree of nnx Variables annotated with logical axis names."""
  with nnx.logical_axis_rules(RULES):
    specs = nnx.get_partition_spec(tree)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Logical sharding constraint on an activation; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  rules = dict(RULES)
  return jax.lax.with_sharding_constraint(x, P(*(rules.get(a) if a else None for a in logical_axes)))
