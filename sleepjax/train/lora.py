"""LoRA (Hu et al. 2021, arXiv:2106.09685) on the attention projections of a frozen model.

A target kernel W (q/k/v: [..., D, H, K]; out: [..., H, K, D]; a leading axis for scanned blocks)
gets an adapter a: [..., I, r], b: [..., r, O] over its flattened input I and output O widths, and
the model runs with W + (alpha / r) · a b. b starts at zero, so training starts from the frozen
model exactly. Adapters live in their own tree ({path: {"a", "b"}}), beside the parameters rather
than inside the graph: the backbone is never differentiated nor updated, only adapters (and a head)
hold optimiser state, and `merge` gives a plain checkpoint's parameters.
"""

import jax
import jax.numpy as jnp

# Attention kernels by parameter name, and how many trailing axes are the input (the rest after
# them are the output); models/transformer.Attention: q/k/v [D, H, K], out [H, K, D].
INPUT_AXES = {"q": 1, "k": 1, "v": 1, "out": 2}


def _name(key) -> str:
  return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _target(path, x, targets) -> bool:
  names = [_name(k) for k in path]
  names = names[:-1] if names[-1] == "value" else names
  return names[-1] in targets and x.ndim >= 3


def init(params, rank: int, targets: tuple[str, ...], key: jax.Array) -> dict:
  """Adapters for every target kernel in `params`: a ~ N(0, 1/I) (Kaiming-like), b = 0."""
  unknown = set(targets) - set(INPUT_AXES)
  if rank <= 0 or unknown:
    raise ValueError(f"LoRA needs rank > 0 and targets among {tuple(INPUT_AXES)}, got rank {rank}, "
                     f"targets {targets}")
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(params)
            if _target(p, x, targets)]
  if not leaves:
    raise ValueError(f"no attention kernel named {targets} in the model")
  out = {}
  for i, (path, w) in enumerate(leaves):
    n_in = INPUT_AXES[[_name(k) for k in path if _name(k) in INPUT_AXES][-1]]
    lead, core = w.shape[:w.ndim - 3], w.shape[w.ndim - 3:]
    d_in = int(jnp.prod(jnp.array(core[:n_in])))
    d_out = int(jnp.prod(jnp.array(core[n_in:])))
    a = jax.random.normal(jax.random.fold_in(key, i), (*lead, d_in, rank)) / jnp.sqrt(d_in)
    out[jax.tree_util.keystr(path)] = {"a": a, "b": jnp.zeros((*lead, rank, d_out))}
  return out


def delta(w: jax.Array, adapter: dict, scale: float) -> jax.Array:
  """scale · a b, shaped like the kernel `w`."""
  ab = jnp.einsum("...ir,...ro->...io", adapter["a"], adapter["b"])
  return (scale * ab).reshape(w.shape).astype(w.dtype)


def merge(params, adapters: dict, alpha: float, rank: int):
  """`params` with every adapted kernel W replaced by W + (alpha / rank) · a b."""
  scale = alpha / rank

  def one(path, w):
    adapter = adapters.get(jax.tree_util.keystr(path))
    return w if adapter is None else w + delta(w, adapter, scale)
  return jax.tree_util.tree_map_with_path(one, params)


def project(x_BxTxD: jax.Array, kernel_DxHxK: jax.Array, adapter: dict, scale: float) -> jax.Array:
  """The adapter's own forward of a q/k/v projection, unmerged: x W + scale · (x a) b."""
  base = jnp.einsum("btd,dhk->bthk", x_BxTxD, kernel_DxHxK)
  low_BxTxR = x_BxTxD @ adapter["a"]
  return base + scale * (low_BxTxR @ adapter["b"]).reshape(base.shape)


def count(tree) -> int:
  """Parameters in a tree."""
  return sum(x.size for x in jax.tree.leaves(tree))
