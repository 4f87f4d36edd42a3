"""The import graph: no circle, and no module importing a layer above its own.

Every import counts, function-level ones included (they run as surely, only later). The layer
order is docs/architecture.md's "Rooms and the direction of imports"; a module imports only from
its own layer or below.
"""

import ast
import os

from tests.conftest import REPO

ROOTS = ("sleepjax", "data_prep", "launch", "configs")

# Module prefix -> layer, bottom to top; the longest matching prefix decides.
LAYERS = {
    # 1 core: schema, config tools, mesh, start-up, profiling
    "sleepjax": 1, "sleepjax.modalities": 1, "sleepjax.records": 1, "sleepjax.config_tools": 1,
    "sleepjax.sharding": 1, "sleepjax.distributed": 1, "sleepjax.profile": 1,
    "sleepjax.caption_tokenizer": 1,
    # 2 data: offline (files -> shards) and online (shards -> batches), side by side
    "data_prep": 2, "sleepjax.data": 2,
    # 3 pure models and objectives
    "sleepjax.models": 3, "sleepjax.objectives": 3,
    # 4 families: a model + its objective + its FLOP count
    "sleepjax.families": 4,
    # 5 training: state, step, optimiser, checkpoints, trainer
    "sleepjax.train": 5,
    # 6 uses of a trained model, and the launchers sweeps write scripts for
    "sleepjax.evaluate": 6, "sleepjax.generate": 6, "sleepjax.bench": 6, "sleepjax.sweep": 6,
    "sleepjax.api": 6, "sleepjax.query": 6, "launch": 6,
    # 7 the command line and the config files it loads
    "sleepjax.cli": 7, "sleepjax.__main__": 7, "configs": 7,
}


def modules() -> dict[str, str]:
  """Dotted module name -> path, for every .py file under ROOTS (symlinks not followed)."""
  out = {}
  for root in ROOTS:
    for folder, _, files in os.walk(REPO / root):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].split(os.sep)
          out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
  return out


def imports(name: str, path: str, known) -> set[str]:
  """The project modules `name` imports anywhere in its file."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      for a in node.names:  # `from pkg import mod` imports the module pkg.mod
        out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
  return {m for m in out if m in known} - {name}


def layer(name: str) -> int:
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in LAYERS:
      return LAYERS[".".join(parts[:n])]
  raise AssertionError(f"{name}: no layer in LAYERS; add its prefix")


def graph() -> dict[str, set[str]]:
  known = modules()
  return {name: imports(name, path, known) for name, path in known.items()}


def upward_arrows(g) -> list[str]:
  return sorted(f"{a} ({layer(a)}) -> {b} ({layer(b)})"
                for a, targets in g.items() for b in targets if layer(b) > layer(a))


def circles(g) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(g[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def test_every_module_has_a_layer():
  for name in graph():
    layer(name)


def test_no_import_points_upward():
  assert not upward_arrows(graph()), "\n".join(upward_arrows(graph()))


def test_no_import_circle():
  assert not circles(graph()), circles(graph())


def test_the_walk_sees_function_level_imports():
  g = graph()
  assert "sleepjax.train.trainer" in g["sleepjax.cli"]  # imported inside cmd_train only
