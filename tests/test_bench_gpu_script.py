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
      "I1126 metrics.py:23] [50] data_wait_frac=0.5, epochs_per_s=1000, mfu=0.1, steps_per_s=1\n"
      "I1126 metrics.py:23] [100] data_wait_frac=0.0123, epochs_per_s=300000, "
      "goodput/step=0.9, mfu=0.402, steps_per_s=20\n")
  r = _run(SCRIPT, out, "table")
  assert r.returncode == 0, r.stderr
  rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
  assert rows["step_default"][1:4] == ["41.8", "45.1", "3.0"]
  assert rows["e2e_train"][1:5] == ["50.0", "40.2", "300000", "1.2%"]  # the last interval's
