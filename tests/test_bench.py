"""`sleepjax bench prep` end to end on a short night (the JSON a user reads)."""

from sleepjax import bench
from sleepjax.modalities import CANONICAL


def test_bench_prep_converts_a_night_and_reports_its_rate(tiny_config, tmp_path):
  result = bench.bench_prep(tiny_config, str(tmp_path), hours=0.5, repeats=1)
  assert result["records"] >= 1 and len(result["cpu_seconds"]) == 1
  assert set(result["present"]) == set(CANONICAL) and all(result["present"].values())
  assert result["hours_per_core_minute"] == 0.5 / (result["cpu_seconds"][0] / 60)
