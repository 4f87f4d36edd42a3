"""`sleepjax bench <what>`: measurements written as JSON to <workdir>/bench/<what>.json.

  prep   hours of PSG converted per core-minute, one 9-modality synthetic night, one process
  read   records/s of the two read paths over the same shards: native records vs TFDS
  data   the full training input pipeline vs a numpy memmap of the same bytes, cold/warm cache,
         reader threads and worker processes
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
  """Converts one synthetic night with every canonical modality (read, channel mapping, QC,
  filtering, resampling, R-peaks, features, captions, encoding); CPU time of one process."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    raw = pathlib.Path(tmp)
    synthetic.write_cohort(raw, n_subjects=1, n_sites=1, hours=hours, seed=0)
    rows, _ = prep.read_metadata(raw / "metadata.csv")
    prep_config = config.prep.copy_and_resolve_references()
    prep_config.modalities = tuple(CANONICAL)
    cpu = []
    for _ in range(repeats):
      t0 = time.process_time()
      recs, summary = prep.convert_recording(raw, rows[0], prep_config)
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


def _drop_page_cache(paths):
  """Evicts the files' clean pages (posix_fadvise DONTNEED): the next read comes from disk."""
  for p in paths:
    fd = os.open(p, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _ensure_data(config, workdir: str) -> str:
  """The prepared data to measure on; a 9-modality synthetic cohort if there is none yet."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  data = config.data.dir or os.path.join(workdir, "data")
  if not os.path.exists(os.path.join(data, "manifest.json")):
    raw = os.path.join(workdir, "raw")
    if not os.path.exists(os.path.join(raw, "metadata.csv")):
      # ~300 MB of shards: larger than CPU caches, so the memmap baseline reads memory, not L3.
      synthetic.write_cohort(raw, n_subjects=12, n_sites=2, hours=4.0, seed=0)
    prep_config = config.prep.copy_and_resolve_references()
    prep_config.modalities = tuple(CANONICAL)
    prep.prepare(raw, data, prep_config)
  return data


def _time_pipeline(manifest, modalities, config, *, seconds: float, threads: int, workers: int,
                   cold: bool) -> dict:
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import shard_paths  # pylint: disable=g-import-not-at-top
  if cold:
    _drop_page_cache(shard_paths(manifest, "train"))
  ds = pipeline.make_dataset(manifest, "train", modalities, local_batch=config.data.global_batch,
                             seed=0, train=True, read_threads=threads,
                             prefetch=max(threads, config.data.prefetch), workers=workers,
                             verify="size")
  it = iter(ds)
  batch = next(it)  # start-up (worker spawn, first reads) is not throughput
  nbytes = sum(v.nbytes for v in batch.values())
  epochs = len(batch["stage"]) * batch["stage"].shape[1]
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  del it
  return {"epochs_per_s": n * epochs / dt, "mb_per_s": n * nbytes / dt / 1e6}


def _time_memmap(path: str, record_bytes: int, n_records: int, batch: int, *, seconds: float,
                 cold: bool, epochs_per_record: int) -> dict:
  """The same bytes read as rows of a numpy memmap, in random order, copied into batches."""
  if cold:
    _drop_page_cache([path])
  mm = np.memmap(path, np.uint8, "r", shape=(n_records, record_bytes))
  rng = np.random.default_rng(0)
  out = np.empty((batch, record_bytes), np.uint8)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    for j, i in enumerate(rng.integers(0, n_records, batch)):
      out[j] = mm[i]
    n += 1
  dt = time.perf_counter() - t0
  return {"epochs_per_s": n * batch * epochs_per_record / dt,
          "mb_per_s": n * batch * record_bytes / dt / 1e6}


def bench_data(config, workdir: str, seconds: float = 4.0) -> dict:
  """Full training pipeline (read, decode, mask, batch) vs numpy memmap; cold/warm; threads/workers."""
  from data_prep.writer import read_records  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import read_manifest, shard_paths  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(_ensure_data(config, workdir))
  modalities = list(manifest["modalities"])
  # The memmap baseline holds exactly the arrays a decoded record carries.
  blobs = [b for p in shard_paths(manifest, "train") for b in read_records(p)]
  arrays = [records.decode(b)[0] for b in blobs]
  record_bytes = sum(a.nbytes for a in arrays[0].values())
  mm_path = os.path.join(workdir, "bench", "memmap.bin")
  os.makedirs(os.path.dirname(mm_path), exist_ok=True)
  with open(mm_path, "wb") as f:
    for a in arrays:
      f.write(b"".join(np.ascontiguousarray(v).tobytes() for v in a.values()))
  e = manifest["segment_epochs"]
  rows = []
  for cold in (False, True):
    base = _time_memmap(mm_path, record_bytes, len(arrays), config.data.global_batch,
                        seconds=seconds, cold=cold, epochs_per_record=e)
    rows.append({"reader": "memmap", "cache": "cold" if cold else "warm", **base})
    for threads, workers in ((1, 0), (2, 0), (4, 0), (2, 2)):
      r = _time_pipeline(manifest, modalities, config, seconds=seconds, threads=threads,
                         workers=workers, cold=cold)
      rows.append({"reader": "pipeline", "cache": "cold" if cold else "warm", "threads": threads,
                   "workers": workers, **r, "vs_memmap": r["mb_per_s"] / base["mb_per_s"]})
  os.remove(mm_path)
  for r in rows:
    print(f"bench data: {r['reader']:<8} {r['cache']:<4} threads={r.get('threads', '-')} "
          f"workers={r.get('workers', '-')}: {r['epochs_per_s']:>8.0f} epochs/s "
          f"{r['mb_per_s']:>7.0f} MB/s" + (f"  {r['vs_memmap']:.0%} of memmap"
                                              if "vs_memmap" in r else ""))
  return {"what": "data", "modalities": modalities, "segment_epochs": e,
          "record_bytes": record_bytes, "records": len(arrays),
          "global_batch": config.data.global_batch, "seconds_per_row": seconds, "rows": rows,
          "targets": {"epochs_per_s": 5000, "vs_memmap_warm": 0.5}}


BENCHMARKS = {"prep": bench_prep, "read": bench_read, "data": bench_data}


def run(what: str, config, workdir: str) -> pathlib.Path:
  if what not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {what!r}; choose from {sorted(BENCHMARKS)}")
  path = _write(workdir, what, BENCHMARKS[what](config, workdir))
  print(f"wrote {path}")
  return path
