"""evaluate.numbers: stated numbers scored per quantity against the epoch's own values and a
constant, and the ridge read-out of each quantity from the signal embedding."""

import numpy as np

from data_prep import captions as C
from data_prep import features as F
from sleepjax.evaluate import numbers
from tests.test_features import synthetic_night

I = F.INDEX


def _rows():
  f = synthetic_night()[-1]
  return f[np.isfinite(f[:, I["hr_mean"]])]


def test_reference_captions_are_exact_and_a_constant_is_not():
  f = _rows()
  refs = [(g, c.text, row) for i, row in enumerate(f) for g, c in C.render_epoch(row, i, 0).items()]
  out = numbers.stated_vs_true(refs)
  assert out["matched"] == 1.0 and out["exact"] == 1.0
  hr = out["quantities"]["hr_mean"]
  assert hr["n"] == len(f) and hr["mae"] < 0.5 and hr["r"] > 0.99
  # a decoder that states the median heart rate whatever the epoch: the constant's error, no r
  median = float(np.median(np.round(f[:, I["hr_mean"]])))
  const = [("cardiac", f"Mean heart rate {median:.0f} bpm (minimum 50, maximum 90 bpm).", row)
           for row in f]
  hr = numbers.stated_vs_true(const)["quantities"]["hr_mean"]
  assert abs(hr["mae"] - hr["constant_mae"]) < 0.5 and np.isnan(hr["r"])
  assert hr["exact"] < 0.5
  # three beats per minute off everywhere: never exact, error 3, r still 1
  off = [("cardiac", f"Mean heart rate {round(float(row[I['hr_mean']])) + 3} bpm (minimum 50, "
          "maximum 90 bpm).", row) for row in f]
  hr = numbers.stated_vs_true(off)["quantities"]["hr_mean"]
  assert hr["exact"] == 0.0 and abs(hr["mae"] - 3) < 0.5 and hr["r"] > 0.99


def test_readout_finds_a_quantity_the_embedding_carries():
  rng = np.random.default_rng(0)
  names = list(F.FEATURE_NAMES)
  feats = rng.normal(70, 8, (200, 4, len(names))).astype(np.float32)
  hr = feats[..., I["hr_mean"]]
  carries = np.concatenate([hr[..., None] / 10 + rng.normal(0, 0.05, hr.shape + (1,)),
                            rng.normal(size=hr.shape + (7,))], -1)
  blind = rng.normal(size=hr.shape + (8,))
  def readout(signal):  # train on the first 150 segments, test on the other 50
    table = {"signal": signal, "features": feats, "present": np.ones(hr.shape, bool)}
    return numbers.readout({k: v[:150] for k, v in table.items()},
                           {k: v[150:] for k, v in table.items()}, names)["hr_mean"]
  good, bad = readout(carries), readout(blind)
  assert good["r2"] > 0.95 and good["mae"] < 0.2 * good["constant_mae"]
  assert bad["r2"] < 0.05 and bad["mae"] > 0.9 * bad["constant_mae"]
