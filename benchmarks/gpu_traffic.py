"""Memory traffic of a train step's non-matmul kernels, read from XLA's optimized GPU program.

At narrow widths the elementwise and reduction kernels between the matmuls are memory-bound, so
the bytes they read and write predict their time. This counts them per kernel (operands +
outputs; cuBLAS / cuDNN calls and gemm fusions excluded) and attributes them to the innermost
sleepjax source line, from an optimized-HLO text dump. No GPU is needed to get one: with JAX's
CUDA plugin installed (`pip install -e '.[cuda12]'`) the step compiles for a GPU described by a
GpuTargetConfigProto text file (XLA's source ships them for H100, H200, A100, ...; a GPU run
with XLA_FLAGS=--xla_dump_to=DIR also writes one, `*.gpu_target_config.pbtxt`).

  python benchmarks/gpu_traffic.py --target_config=h200.txtpb --dump=runs/hlo \\
      --config=configs/sleep2vec.py:dense --config.data.global_batch=128 --config.model.attention=cudnn
  python benchmarks/gpu_traffic.py --hlo=DIR/module_0001.jit_step.sm_9.0a_gpu_after_optimizations.txt

Compiling without a device skips XLA's autotuning (gemms are forced to cuBLAS), and the fusion
choices are those of the installed XLA, so compare variants compiled the same way.
"""

import collections
import glob
import os
import re
import sys

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
          "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_WHILE_BODY = re.compile(r"body=%([\w.\-]+).*known_trip_count\":\{\"n\":\"(\d+)\"")


def _nbytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def _table(text: str, header: str) -> dict[int, str]:
  """One of the dump's numbered tables (FileNames, FunctionNames, FileLocations, StackFrames)."""
  start = text.find("\n" + header + "\n")
  rows = {}
  if start < 0:
    return rows
  for line in text[start + len(header) + 2:].splitlines():
    if not line[:1].isdigit():
      break
    key, value = line.split(" ", 1)
    rows[int(key)] = value
  return rows


def _sources(text: str):
  """stack_frame_id -> "file:line function" of the innermost sleepjax frame (else innermost)."""
  files, functions = _table(text, "FileNames"), _table(text, "FunctionNames")
  locations, frames = _table(text, "FileLocations"), _table(text, "StackFrames")
  field = lambda row, name: int(re.search(name + r"=(\d+)", row).group(1))

  def where(frame: int) -> str:
    chain, seen = [], set()
    while frame in frames and frame not in seen:
      seen.add(frame)
      loc = locations[field(frames[frame], "file_location_id")]
      path = files[field(loc, "file_name_id")].strip('"')
      chain.append(f"{path}:{field(loc, 'line')} {functions[field(loc, 'function_name_id')].strip(chr(34))}")
      frame = field(frames[frame], "parent_frame_id") - 1  # printed one above the parent's key
    mine = [c for c in chain if "/sleepjax/" in c]
    pick = (mine or chain or ["?"])[0]
    return pick.split("/sleepjax/")[-1] if mine else os.path.basename(pick)

  return where


def _runs(loops: dict[str, list[tuple[str, int]]]):
  """computation -> times one call of the program runs it: a while body (a `lax.scan`) runs its
  known trip count times per run of the computation holding the loop."""
  body_of = {body: (parent, n) for parent, bodies in loops.items() for body, n in bodies}

  def runs(computation: str, depth: int = 0) -> int:
    if computation not in body_of or depth > 64:
      return 1
    parent, n = body_of[computation]
    return n * runs(parent, depth + 1)

  return runs


def traffic(text: str) -> dict:
  """{"total_bytes", "kernels", "by_source": [(source, bytes), ...] largest first}; a kernel in a
  loop body counts once per iteration."""
  sizes, kernels, loops, computation = {}, [], collections.defaultdict(list), None
  for line in text.splitlines():
    c = _COMPUTATION.match(line)
    if c:
      computation = c.group(1)
      continue
    m = _INSTRUCTION.match(re.sub(r"/\*index=\d+\*/", "", line))  # long tuples' comments
    if not m:
      continue
    name, type_, op, args, rest = m.groups()
    w = _WHILE_BODY.search(rest) if op == "while" else None
    if w:
      loops[computation].append((w.group(1), int(w.group(2))))
    sizes[name] = _nbytes(type_)
    if type_.startswith("("):  # tuple outputs: "%name#k" operands read element k
      for k, part in enumerate(_SHAPE.finditer(type_)):
        sizes[f"{name}#{k}"] = _nbytes(part.group(0))
    # Non-matmul kernels: XLA's loop/input fusions, and block-level Triton fusions (kind "__triton",
    # reductions and normalisations); gemm fusions and cuBLAS/cuDNN calls are the matmul side.
    if op != "fusion" or ("kind=kCustom" in rest and '"kind":"__triton"' not in rest):
      continue
    operands = re.findall(r"%([\w.\-]+(?:#\d+)?)", args)
    frame = re.search(r"stack_frame_id=(\d+)", rest)
    kernels.append((sizes[name] + sum(sizes.get(o, 0) for o in operands),
                    int(frame.group(1)) if frame else None, computation))
  where, runs, by_source = _sources(text), _runs(loops), collections.Counter()
  kernels = [(nbytes * runs(computation), frame) for nbytes, frame, computation in kernels]
  for nbytes, frame in kernels:
    by_source[where(frame) if frame is not None else "?"] += nbytes
  return {"total_bytes": sum(b for b, _ in kernels), "kernels": len(kernels),
          "by_source": by_source.most_common()}


def _report(path: str, top: int = 15):
  with open(path) as f:
    result = traffic(f.read())
  print(f"{path}\nnon-matmul kernels: {result['kernels']}, {result['total_bytes'] / 1e9:.2f} GB "
        "read + written per call")
  for source, nbytes in result["by_source"][:top]:
    print(f"{nbytes / 1e9:8.2f} GB  {source}")


def _compile(argv: list[str]) -> str:
  """Compiles the config's train step for the target GPU; returns the optimized-HLO dump path."""
  opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
  dump = opts.pop("dump", "runs/hlo")
  with open(opts.pop("target_config")) as f:
    target = f.read()
  n = int(opts.pop("devices", "1"))
  os.environ["JAX_PLATFORMS"] = "cpu"  # no GPU here: the target is the topology's devices
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                             " --xla_dump_hlo_module_re=.*train_step.* --xla_gpu_enable_triton_gemm=false")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from sleepjax import config_tools  # pylint: disable=g-import-not-at-top
  from sleepjax.bench import step as bench_step  # pylint: disable=g-import-not-at-top
  config = config_tools.load_config(opts.pop("config"))
  for key, value in opts.items():
    config_tools.override(config, key.removeprefix("config."), value)
  topology = topologies.get_topology_desc(platform="cuda", topology_name="target",
                                          target_config=target, topology=f"1x1x{n}")
  result = bench_step.compile_step(config, run=False, devices=topology.devices)[0]
  print(f"compiled for {n} x {result['device_kind']}: {result['bytes_per_device'] / 2**30:.2f} GiB "
        f"per device (temp {result['temp_size_in_bytes'] / 2**30:.2f} GiB)")
  found = sorted(glob.glob(os.path.join(dump, "*train_step*gpu_after_optimizations.txt")),
                 key=os.path.getmtime)
  if not found:
    raise SystemExit(f"no optimized GPU HLO written under {dump}")
  return found[-1]


def main(argv: list[str]):
  hlo = [a.split("=", 1)[1] for a in argv if a.startswith("--hlo=")]
  _report(hlo[0] if hlo else _compile(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
