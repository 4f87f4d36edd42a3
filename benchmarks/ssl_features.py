"""How much stage a linear probe reads from prep's hand-crafted per-epoch features of some
modalities: the information ceiling behind BENCHMARKS.md "Cardio-respiratory only" (issue 23).

  python benchmarks/ssl_features.py W/ssl/data [--config=configs/ssl.py]

The features are `data_prep/features.py`'s (heart rate and RMSSD, SpO2, breathing rate and
regularity, flow flattening; EEG band fractions, spindles, slow waves, EOG, EMG), stored in the
shards; missing values take the training split's median. The probes, label draws and splits are
the `few_shot` and `site` tasks' (`sleepjax/evaluate/tasks.py`), as for the encoders.
"""

import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from data_prep.features import FEATURE_NAMES
from sleepjax.data import manifest as manifest_lib, pipeline
from sleepjax.evaluate import tasks
from sleepjax.evaluate.embed import LABELS
from sleepjax.modalities import EVENTS

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ssl.py")
CARDIO = ("hr_mean", "hr_min", "hr_max", "hr_trend", "hr_rmssd", "spo2_mean", "spo2_min",
          "spo2_desats", "effort_rate", "effort_ibi_cv", "airflow_rate", "airflow_ibi_cv",
          "flow_flatness")
SETS = {"cardio-respiratory features": CARDIO,
        # not the scored events' columns (annotations, not signal) nor the stage
        "every modality's features": tuple(n for n in FEATURE_NAMES if n != "stage" and not any(
            n.startswith(f"{k}_") for k in EVENTS))}


def _table(manifest, split, config):
  if not manifest["splits"][split]["records"]:
    return None
  ds = pipeline.make_dataset(manifest, split, ["ecg"], window=None, seed=0, train=False,
                             local_batch=config.data.global_batch,
                             read_threads=config.data.read_threads)
  rows = [{k: b[k] for k in LABELS} for b in ds]
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.lexsort((out["epoch_index"][:, 0], out["recording"]))
  return {k: v[order] for k, v in out.items()}


def main(argv):
  config = _CONFIG.value
  manifest = manifest_lib.read_manifest(argv[1])
  raw = {s: _table(manifest, config.eval[f"{s}_split"], config) for s in ("train", "val", "test")}
  for name, cols in SETS.items():
    idx = [FEATURE_NAMES.index(c) for c in cols]
    train = raw["train"]["features"][..., idx].reshape(-1, len(idx)).astype(np.float64)
    train[~np.isfinite(train)] = np.nan
    fill = np.nan_to_num(np.nanmedian(train, 0))  # a column never computed: 0
    print(f"{name}: missing per column (train) " + ", ".join(
        f"{c} {m:.0%}" for c, m in zip(cols, np.isnan(train).mean(0))))
    tables = {s: None if t is None else {**t, "epoch": np.where(
        np.isfinite(f := t["features"][..., idx]), f, fill)} for s, t in raw.items()}
    split_of = {config.eval[f"{s}_split"]: s for s in tables}
    ctx = tasks.Context(config, manifest, ["ecg"], [name],
                        lambda enc, split, subset: tables[split_of[split]])
    for probe, out in (("in-site", tasks.few_shot(ctx)[name]),
                       ("held-out site", tasks.site(ctx)[name]["curve"])):
      print(f"{name:<28} {probe:<14}" + "  ".join(
          f"{float(f):.0%} {v['macro_f1']['mean']:.3f}±{v['macro_f1']['sd']:.3f}"
          for f, v in out.items()))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
