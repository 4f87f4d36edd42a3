"""benchmarks/gpu.sh: every command's config flags parse (a typo must not cost a borrowed GPU's
time), and its table reads what `bench step` and `train` write."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def _run(script, out, mode):
  env = {**os.environ, "MODE": mode, "PYTHON": sys.executable}
  return subprocess.run(["bash", str(script), str(out)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_every_command_parses_and_a_bad_key_is_caught(tmp_path):
  r = _run(SCRIPT, tmp_path / "out", "check")
  assert r.returncode == 0 and "every command's flags parse" in r.stdout, r.stdout + r.stderr
  bad = tmp_path / "gpu.sh"
  bad.write_text(SCRIPT.read_text().replace("model.residual_dtype", "model.residual_dtyp"))
  r = _run(bad, tmp_path / "out", "check")
  assert r.returncode == 1 and "CHECK step_residual_f32: bad flags" in r.stdout, r.stdout


def test_table_reads_step_json_and_the_train_log(tmp_path):
  out = tmp_path / "out"
  (out / "step_default" / "bench").mkdir(parents=True)
  (out / "step_default" / "bench" / "step.json").write_text(json.dumps(
      {"step_seconds": 0.0418, "mfu": 0.4512, "bytes_per_device": 3 * 2**30,
       "device_kind": "NVIDIA H100 80GB HBM3"}))
  (out / "e2e_train.log").write_text(
      "I1126 metrics.py:23] [50] data_wait_frac=0.5, sleep_epochs_per_s=1000, mfu=0.1, steps_per_s=1\n"
      "I1126 metrics.py:23] [100] data_wait_frac=0.0123, sleep_epochs_per_s=300000, "
      "goodput/step=0.9, mfu=0.402, steps_per_s=20\n")
  r = _run(SCRIPT, out, "table")
  assert r.returncode == 0, r.stderr
  rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
  assert rows["step_default"][1:4] == ["41.8", "45.1", "3.0"]
  assert rows["e2e_train"][1:5] == ["50.0", "40.2", "300000", "1.2%"]  # the last interval's


HLO = """HloModule jit_train_step, is_scheduled=true

FileNames
1 "/x/sleepjax/models/layers.py"
2 "/x/site-packages/flax/nnx/nn/linear.py"

FunctionNames
1 "gelu"
2 "Linear.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=80 end_line=80 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=431 end_line=431 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

ENTRY %main (p0: bf16[4,8], p1: bf16[8,16]) -> bf16[4,16] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[8,16]{1,0} parameter(1)
  %custom-call.1 = (bf16[4,16]{1,0}, s8[1024]{0}) custom-call(%p0, %p1), custom_call_target="__cublas$lt$matmul"
  %gemm_fusion.2 = bf16[4,16]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%g, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %loop_fusion.3 = (bf16[4,16]{1,0}, f32[4,16]{1,0}) fusion(%custom-call.1#0, %gemm_fusion.2), kind=kLoop, calls=%f, metadata={op_name="gelu" stack_frame_id=2}
  %input_reduce_fusion.4 = f32[4]{0} fusion(%loop_fusion.3#1), kind=kCustom, calls=%r, metadata={stack_frame_id=1}, backend_config={"fusion_backend_config":{"kind":"__triton"}}
  ROOT %copy.5 = bf16[4,16]{1,0} copy(%loop_fusion.3#0)
}
"""


def test_gpu_traffic_counts_non_matmul_kernels_by_source():
  """benchmarks/gpu_traffic.py: operands + outputs of loop/input and block-level Triton fusions,
  tuple elements read by index, gemm fusions and cuBLAS calls left out, attributed to the
  innermost sleepjax frame."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("gpu_traffic", REPO / "benchmarks" / "gpu_traffic.py")
  gpu_traffic = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gpu_traffic)
  r = gpu_traffic.traffic(HLO)
  loop = (64 * 2 + 64 * 4) + (64 * 2 + 64 * 2)  # outputs bf16 + f32 [4,16]; reads two bf16 [4,16]
  reduce = 4 * 4 + 64 * 4  # writes f32[4], reads the f32 tuple element
  assert r["kernels"] == 2 and r["total_bytes"] == loop + reduce
  assert dict(r["by_source"]) == {"models/layers.py:80 gelu": loop + reduce}


LOOP_HLO = """HloModule jit_train_step, is_scheduled=true

%body (arg: (s32[], f32[8])) -> (s32[], f32[8]) {
  %arg = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%arg), index=1
  %loop_fusion.1 = f32[8]{0} fusion(%x), kind=kLoop, calls=%f
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %loop_fusion.1)
}

ENTRY %main (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %loop_fusion.2 = (f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, /*index=5*/f32[8]{0}) fusion(%p0), kind=kLoop, calls=%g
  %while.3 = (s32[], f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, /*index=5*/f32[8]{0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[8]{0} get-tuple-element(%while.3), index=1
}
"""


def test_gpu_traffic_counts_a_loop_body_per_iteration():
  """A kernel in a while body (a `lax.scan`) counts trip-count times; a tuple with more than five
  elements (XLA writes /*index=5*/ in it) is parsed."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("gpu_traffic", REPO / "benchmarks" / "gpu_traffic.py")
  gpu_traffic = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gpu_traffic)
  r = gpu_traffic.traffic(LOOP_HLO)
  assert r["kernels"] == 2
  assert r["total_bytes"] == 3 * (32 + 32) + (6 * 32 + 32)
