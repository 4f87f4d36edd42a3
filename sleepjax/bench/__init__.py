"""`sleepjax bench <what>`: measurements written as JSON to <workdir>/bench/<what>.json.

  prep   hours of PSG converted per core-minute, one 9-modality synthetic night, one process
  read   records/s of the two read paths over the same shards: native records vs TFDS
  data   the training input pipeline at the sleep2vec pair-first and nine-modality shapes vs a
         numpy memmap of the same bytes; reader threads and worker processes, 1 to every core
  step   the jitted train step on synthetic batches: compile time, step time, MFU, memory per
         device; `--aot_devices=N` compiles for N devices, `--profile_steps=N` traces N steps and
         writes bench/profile_ops.json (device time by kernel category and op; sleepjax/profile.py)
  ssl    self-supervised benchmark (`--config=configs/ssl.py`): synth, prep, pretraining, then
         pretrained vs random-init vs EEG band-power probes at few labels, in-site and on a
         held-out site, and the representation audit over checkpoints (`sleepjax/bench/ssl.py`)
  wearable  staging from PPG + actigraphy alone (`--config=configs/wearable.py`): a PSG model
         adapted to the wearables (`sleepjax adapt`) vs the same network from scratch on them vs
         random encoders, at few labels on held-out subjects (`sleepjax/bench/wearable.py`)

  Every benchmark lives in this package, above the layers it measures: `step.py` (`bench step`),
  `pair_first.py` (pair-first vs all-modality loss compute: `python -m sleepjax.bench.pair_first`),
  `sleeplm.py` (a SleepLM preset's train step: `python -m sleepjax.bench.sleeplm`).
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
  from data_prep import metadata, prep, synthetic  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    raw = pathlib.Path(tmp)
    # wearables: PPG and actigraphy too, so every canonical modality is converted
    synthetic.write_cohort(raw, n_subjects=1, n_sites=1, hours=hours, seed=0, wearables=True)
    rows = metadata.read_metadata(raw / "metadata.csv")[0]
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
            "records_per_s": rates, "sleep_epochs_per_s": {k: v * epochs for k, v in rates.items()},
            "faster": max(rates, key=rates.get)}
  print("bench read: " + ", ".join(f"{k} {v:.0f} records/s ({v * epochs:.0f} epochs/s)"
                                   for k, v in rates.items()))
  return result


# The shapes that matter: sleep2vec pretraining (pair-first, one hour windows) and a nine-modality
# all-present step. Both read signals + masks only (what a sleep2vec step reads).
# step_ms: the measured step time of that shape on one H200 (DESIGN.md anchors, issue 11), used to
# simulate the step in the device-feed row.
DATA_SHAPES = {
    "sleep2vec_pair": dict(batch=128, window=120, sampling="pair_first", pair=("eeg", "ecg"),
                           step_ms=59.5),
    "nine_modalities": dict(batch=256, window=10, sampling="all_present", pair=None,
                            step_ms=51.2),
}
DATA_TARGETS = {"sleep2vec_pair": 80_000, "nine_modalities": 25_000, "vs_memmap": 0.5,
                "scaling_efficiency_at_2": 0.7}


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _ensure_data(config, workdir: str, settings: dict) -> str:
  """A nine-modality synthetic cohort prepared with training-sized segments, made once."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  name = f"s{settings['subjects']}_h{settings['hours']:g}_e{settings['segment_epochs']}"
  data = os.path.join(workdir, "bench", f"data_{name}")
  if not os.path.exists(os.path.join(data, "manifest.json")):
    raw = os.path.join(workdir, "bench", f"raw_{name}")
    if not os.path.exists(os.path.join(raw, "metadata.csv")):
      synthetic.write_cohort(raw, n_subjects=settings["subjects"], n_sites=2,
                             hours=settings["hours"], seed=0, workers=_cores())
    prep_config = config.prep.copy_and_resolve_references()
    prep_config.modalities = tuple(CANONICAL)
    prep_config.segment_epochs = settings["segment_epochs"]
    prep_config.shard_records = 16
    prep_config.workers = _cores()
    prep.prepare(raw, data, prep_config)
  return data


def _memmap_files(manifest, directory: str) -> dict:
  """Every train epoch's signals and masks as flat per-modality arrays: the memmap baseline."""
  from data_prep.writer import read_records  # pylint: disable=g-import-not-at-top
  from sleepjax import records  # pylint: disable=g-import-not-at-top
  from sleepjax.data.manifest import shard_paths  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  done = os.path.join(directory, "done.json")
  if not os.path.exists(done):
    files = {n: open(os.path.join(directory, n.replace("/", "_")), "wb")
             for m in manifest["modalities"] for n in (f"sig/{m}", f"mask/{m}")}
    epochs = 0
    for path in shard_paths(manifest, "train"):
      for blob in read_records(path):
        arrays, _ = records.decode(blob)
        for n, f in files.items():
          f.write(np.ascontiguousarray(arrays[n]).tobytes())
        epochs += len(arrays["stage"])
    shapes = {n: [epochs, *arrays[n].shape[1:]] for n in files}
    dtypes = {n: arrays[n].dtype.str for n in files}
    for f in files.values():
      f.close()
    with open(done, "w") as f:
      json.dump({"shapes": shapes, "dtypes": dtypes}, f)
  with open(done) as f:
    info = json.load(f)
  return {n: np.memmap(os.path.join(directory, n.replace("/", "_")), info["dtypes"][n], "r",
                       shape=tuple(shape)) for n, shape in info["shapes"].items()}


def _time_memmap(arrays: dict, modalities, batch: int, window: int, seconds: float) -> dict:
  """Random windows of exactly the arrays the step needs, copied from memmaps into a batch."""
  names = [f"{k}/{m}" for m in modalities for k in ("sig", "mask")]
  out = {n: np.empty((batch, window, *arrays[n].shape[1:]), arrays[n].dtype) for n in names}
  n_epochs = len(arrays[names[0]])
  rng = np.random.default_rng(0)
  def one():
    for b, s in enumerate(rng.integers(0, n_epochs - window, batch).tolist()):
      for n in names:
        out[n][b] = arrays[n][s:s + window]
  one()  # fault the pages in: warm cache
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    one()
    n += 1
  dt = time.perf_counter() - t0
  nbytes = sum(v.nbytes for v in out.values())
  return {"sleep_epochs_per_s": n * batch * window / dt, "mb_per_s": n * nbytes / dt / 1e6}


def _dataset(manifest, shape: dict, threads: int, workers: int):
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  pair = shape["pair"]
  return pipeline.make_dataset(
      manifest, "train", list(manifest["modalities"]), window=shape["window"],
      local_batch=shape["batch"], seed=0, train=True, sampling=shape["sampling"],
      pair_weights={"+".join(pair): 1.0} if pair else None, fields=(), read_threads=threads,
      prefetch=max(2, threads), workers=workers, verify="size")


def _time_feed(manifest, shape: dict, *, seconds: float, threads: int, workers: int) -> dict:
  """Pipeline -> `DevicePrefetch` (jax.device_put to the first device) -> a simulated step of
  `step_ms` (the device computes, the host waits): epochs/s and the fraction of time blocked on
  input, as the trainer reports it."""
  import jax  # pylint: disable=g-import-not-at-top
  from sleepjax.data.prefetch import DevicePrefetch  # pylint: disable=g-import-not-at-top
  it = DevicePrefetch(iter(_dataset(manifest, shape, threads, workers)), jax.device_put,
                      thread=not workers)  # Grain worker iterators: pulled in this thread
  jax.block_until_ready(next(it))
  it.take_wait()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    jax.block_until_ready(next(it))
    time.sleep(shape["step_ms"] / 1e3)
    n += 1
  dt = time.perf_counter() - t0
  wait = it.take_wait()
  it.close()
  return {"sleep_epochs_per_s": n * shape["batch"] * shape["window"] / dt, "data_wait_frac": wait / dt,
          "step_ms": shape["step_ms"], "device": str(jax.devices()[0].device_kind)}


def _time_pipeline(manifest, shape: dict, *, seconds: float, threads: int, workers: int) -> dict:
  it = iter(_dataset(manifest, shape, threads, workers))
  batch = next(it)  # start-up (worker spawn, first reads) is not throughput
  nbytes = sum(v.nbytes for v in batch.values())
  epochs = shape["batch"] * shape["window"]
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  del it
  return {"sleep_epochs_per_s": n * epochs / dt, "mb_per_s": n * nbytes / dt / 1e6,
          "keys": sorted(batch)}


def bench_data(config, workdir: str) -> dict:
  """The training input pipeline at the shapes that matter vs a numpy memmap of the same bytes:
  reader threads and worker processes from 1 to every core, warm cache."""
  from sleepjax.data.manifest import read_manifest  # pylint: disable=g-import-not-at-top
  settings = config.bench.to_dict()  # data size, seconds per row, worker counts
  manifest = read_manifest(_ensure_data(config, workdir, settings))
  memmaps = _memmap_files(manifest, os.path.join(manifest["dir"], "memmap"))
  cores = _cores()
  counts = sorted({1, cores} | {k for k in (2, 4, 8, 16, 32, 64) if k < cores})
  max_workers = settings["max_workers"] or cores
  load_before = os.getloadavg()
  rows, best, scaling = [], {}, {}
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  for name, shape in DATA_SHAPES.items():
    pipeline.release_buffers()  # the other shape's recycled batches
    modalities = shape["pair"] or list(manifest["modalities"])
    base = _time_memmap(memmaps, modalities, shape["batch"], shape["window"], settings["seconds"])
    rows.append({"shape": name, "reader": "memmap", "threads": 1, "workers": 0, **base})
    runs = [(k, 0) for k in counts] + [(1, k) for k in counts if 2 <= k <= max_workers]
    for threads, workers in runs:
      r = _time_pipeline(manifest, shape, seconds=settings["seconds"], threads=threads,
                         workers=workers)
      cores_used = max(threads, workers)
      rows.append({"shape": name, "reader": "pipeline", "threads": threads, "workers": workers,
                   **r, "per_core_sleep_epochs_per_s": r["sleep_epochs_per_s"] / min(cores_used, cores),
                   "vs_memmap": r["mb_per_s"] / base["mb_per_s"]})
      print(f"bench data: {name:<16} threads={threads:<2} workers={workers:<2} "
            f"{r['sleep_epochs_per_s']:>9.0f} epochs/s {r['mb_per_s']:>7.0f} MB/s  "
            f"{rows[-1]['vs_memmap']:.0%} of memmap ({base['mb_per_s']:.0f} MB/s)", flush=True)
    mine = [r for r in rows if r["shape"] == name and r["reader"] == "pipeline"]
    top = max(mine, key=lambda r: r["sleep_epochs_per_s"])
    best[name] = {k: top[k] for k in ("sleep_epochs_per_s", "mb_per_s", "vs_memmap", "threads",
                                      "workers")}
    feed = _time_feed(manifest, shape, seconds=settings["seconds"], threads=top["threads"],
                      workers=top["workers"])
    rows.append({"shape": name, "reader": "device_feed", "threads": top["threads"],
                 "workers": top["workers"], **feed})
    print(f"bench data: {name:<16} + device prefetch to {feed['device']}, simulated "
          f"{feed['step_ms']} ms step: {feed['sleep_epochs_per_s']:.0f} epochs/s, data wait "
          f"{feed['data_wait_frac']:.1%}", flush=True)
    one = next(r for r in mine if r["threads"] == 1 and r["workers"] == 0)["sleep_epochs_per_s"]
    scaling[name] = {}
    for r in mine:  # efficiency: rate with k threads (or worker processes) / (k x rate with 1)
      kind, k = ("workers", r["workers"]) if r["workers"] else ("threads", r["threads"])
      if k > 1:
        scaling[name][f"{kind}={k}"] = r["sleep_epochs_per_s"] / (k * one)
  return {"what": "data", "cores": cores, "settings": settings,
          "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
          "modalities": list(manifest["modalities"]), "segment_epochs": manifest["segment_epochs"],
          "train_records": manifest["splits"]["train"]["records"], "shapes": DATA_SHAPES,
          "rows": rows, "best": best, "scaling_efficiency": scaling, "targets": DATA_TARGETS}


def bench_step(config, workdir: str) -> dict:
  """The jitted train step on synthetic batches: see `sleepjax.bench.step`."""
  from sleepjax.bench import step  # pylint: disable=g-import-not-at-top
  return step.bench_step(config, workdir)


def bench_ssl(config, workdir: str) -> dict:
  """Pretrained vs random-init vs band-power encoders on a self-supervised benchmark: see
  `sleepjax.bench.ssl`."""
  from sleepjax.bench import ssl  # pylint: disable=g-import-not-at-top
  return ssl.bench_ssl(config, workdir)


def bench_wearable(config, workdir: str) -> dict:
  """Adapted vs from-scratch vs random encoders staging from wearables: see
  `sleepjax.bench.wearable`."""
  from sleepjax.bench import wearable  # pylint: disable=g-import-not-at-top
  return wearable.bench_wearable(config, workdir)


BENCHMARKS = {"prep": bench_prep, "read": bench_read, "data": bench_data, "step": bench_step,
              "ssl": bench_ssl, "wearable": bench_wearable}


def run(what: str, config, workdir: str) -> pathlib.Path:
  if what not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {what!r}; choose from {sorted(BENCHMARKS)}")
  path = _write(workdir, what, BENCHMARKS[what](config, workdir))
  print(f"wrote {path}")
  return path
