"""`sleepjax bench <what>`: measurements written as JSON to <workdir>/bench/<what>.json.

  prep   hours of PSG converted per core-minute, one 9-modality synthetic night, one process
  read   records/s of the two read paths over the same shards: native records vs TFDS
"""

import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from sleepjax.modalities import CANONICAL


def _machine() -> dict:
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count()}


def _write(workdir: str, name: str, result: dict) -> pathlib.Path:
  out = pathlib.Path(workdir) / "bench"
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{name}.json"
  path.write_text(json.dumps({"machine": _machine(), **result}, indent=1))
  return path


def bench_prep(config, workdir: str, hours: float = 8.0, repeats: int = 2) -> dict:
  """Converts one synthetic night with every canonical modality; CPU time of one process."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    raw = pathlib.Path(tmp)
    synthetic.write_cohort(raw, n_subjects=1, n_sites=1, hours=hours, seed=0)
    rows, _ = prep.read_metadata(raw / "metadata.csv")
    rid = rows[0]["recording_id"]
    cpu = []
    for _ in range(repeats):
      t0 = time.process_time()
      recs, summary = prep.convert_recording(
          prep._find_signal_file(raw, rid), raw / "annotations" / f"{rid}.xml", rows[0],  # pylint: disable=protected-access
          list(CANONICAL), config.prep.segment_epochs, config.prep.channel_map)
      cpu.append(time.process_time() - t0)
  best = min(cpu)
  result = {"what": "prep", "hours": hours, "modalities": list(CANONICAL),
            "present": {m: any(v) for m, v in summary["present"].items()},
            "records": len(recs), "cpu_seconds": cpu,
            "hours_per_core_minute": hours / (best / 60), "target_hours_per_core_minute": 50}
  print(f"bench prep: {hours:.0f} h night in {best:.2f} CPU-s -> "
        f"{result['hours_per_core_minute']:.0f} h of PSG per core-minute (target >= 50)")
  return result


def bench_read(config, workdir: str, passes: int = 3) -> dict:
  """Random-access read + decode of every train record: native ArrayRecord vs the TFDS builder."""
  import grain  # pylint: disable=g-import-not-at-top
  from data_prep.tfds_builder import SleepSegments  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import read_manifest, shard_paths  # pylint: disable=g-import-not-at-top
  data = config.data.dir or os.path.join(workdir, "data")
  manifest = read_manifest(data)
  native = grain.sources.ArrayRecordDataSource(shard_paths(manifest, "train"))
  builder = SleepSegments(source_dir=data, data_dir=os.path.join(workdir, "tfds"))
  builder.download_and_prepare(file_format="array_record")
  tfds_source = builder.as_data_source(split="train")
  paths = {"native": lambda i: records.decode(native[i]), "tfds": lambda i: tfds_source[i]}
  order = np.random.default_rng(0).permutation(len(native))
  rates = {}
  for name, read in paths.items():
    read(0)  # open files outside the timing
    t0 = time.perf_counter()
    for _ in range(passes):
      for i in order:
        read(int(i))
    rates[name] = passes * len(order) / (time.perf_counter() - t0)
  epochs = manifest["segment_epochs"]
  result = {"what": "read", "records": len(native), "segment_epochs": epochs,
            "records_per_s": rates, "epochs_per_s": {k: v * epochs for k, v in rates.items()},
            "faster": max(rates, key=rates.get)}
  print("bench read: " + ", ".join(f"{k} {v:.0f} records/s ({v * epochs:.0f} epochs/s)"
                                   for k, v in rates.items()))
  return result


BENCHMARKS = {"prep": bench_prep, "read": bench_read}


def run(what: str, config, workdir: str) -> pathlib.Path:
  if what not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {what!r}; choose from {sorted(BENCHMARKS)}")
  path = _write(workdir, what, BENCHMARKS[what](config, workdir))
  print(f"wrote {path}")
  return path
