"""sleepjax.profile: the per-op summary of a trace (device streams only, no double counting)."""

import gzip
import json
import os

from sleepjax import profile


def _write_trace(tmp_path, events):
  run = tmp_path / "plugins" / "profile" / "run1"
  run.mkdir(parents=True)
  with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)


def _meta(pid, name, tid=None):
  if tid is None:
    return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
  return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _op(pid, tid, name, dur, hlo_op=None):
  e = {"ph": "X", "pid": pid, "tid": tid, "ts": 0.0, "dur": dur, "name": name}
  if hlo_op:
    e["args"] = {"hlo_op": hlo_op}
  return e


def test_gpu_trace_counts_stream_kernels_once_by_category(tmp_path):
  events = [
      _meta(1, "/host:CPU"), _meta(1, "python", tid=1),
      _meta(2, "/device:GPU:0"), _meta(2, "Stream #14(Compute)", tid=14),
      _meta(2, "XLA Ops", tid=99),
      _op(1, 1, "PjitFunction(step)", 9000.0),  # host time: not device time
      _op(2, 14, "nvjet_sm90_tst_128x128_NNT", 3000.0, "custom-call.1"),
      _op(2, 14, "nvjet_sm90_tst_128x128_NNT", 1000.0, "custom-call.1"),
      _op(2, 14, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 500.0, "custom-call.7"),
      _op(2, 14, "loop_convert_fusion_3", 250.0, "loop_convert_fusion.3"),
      _op(2, 14, "nccl_AllReduce_RING_LL", 250.0, "all-reduce.2"),
      _op(2, 99, "custom-call.1", 4000.0, "custom-call.1"),  # the same work on an aggregate line
  ]
  _write_trace(tmp_path, events)
  s = profile.summarize(str(tmp_path), steps=2, top=3)
  assert s["device_ms_per_step"] == 2.5  # (3000+1000+500+250+250) us over 2 steps
  assert s["category_ms_per_step"] == {"matmul": 2.0, "attention": 0.25, "other": 0.125,
                                       "collective": 0.125}
  assert s["category_fraction"]["matmul"] == 0.8
  assert [o["op"] for o in s["top_ops"]] == ["custom-call.1", "custom-call.7",
                                             "loop_convert_fusion.3"]
  assert s["streams_ms_per_step"] == {"Stream #14(Compute)": 2.5}


def test_cpu_trace_counts_thunks_that_name_an_hlo_op(tmp_path):
  events = [_meta(1, "/host:CPU"), _meta(1, "tf_XLAEigen/1", tid=5),
            _op(1, 5, "ThunkExecutor::Execute", 800.0),  # wrapper: no hlo_op
            _op(1, 5, "dot.3", 600.0, "dot.3"), _op(1, 5, "fusion.9", 200.0, "fusion.9")]
  _write_trace(tmp_path, events)
  s = profile.summarize(str(tmp_path), steps=1)
  assert s["device_ms_per_step"] == 0.8
  assert s["category_ms_per_step"] == {"matmul": 0.6, "other": 0.2}


def test_profile_step_traces_and_writes_the_summary(tmp_path):
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((64, 64))
  f(x).block_until_ready()
  s = profile.profile_step(lambda: f(x).block_until_ready(), 2, str(tmp_path))
  assert os.path.exists(tmp_path / "profile_ops.json")
  assert s["steps"] == 2 and s["device_ms_per_step"] > 0
  assert s["top_ops"] and s["top_ops"][0]["ms_per_step"] > 0  # the jitted op itself


def test_missing_trace_is_a_named_error(tmp_path):
  import pytest
  with pytest.raises(FileNotFoundError, match="perfetto_trace"):
    profile.summarize(str(tmp_path), steps=1)
