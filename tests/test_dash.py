"""DAS-H InfoNCE against an independent float64 NumPy implementation written from DESIGN.md."""

import math

import numpy as np
import pytest

from sleepjax.objectives.dash import dash_info_nce, dash_weights

HP = dict(sigma_age=20.0, alpha_sex=0.8, gamma_same=1.3, gamma_diff=0.8, eps=1e-6)


def reference_weights(age, sex, site, rec, sigma_age, alpha_sex, gamma_same, gamma_diff, eps):
  B = len(age)
  w, h = np.zeros((B, B)), np.zeros((B, B))
  for i in range(B):
    for j in range(B):
      if math.isnan(age[i]) or math.isnan(age[j]) or sex[i] < 0 or sex[j] < 0:
        k = 0.0
      else:
        k = math.exp(-abs(age[i] - age[j]) / sigma_age) * (1.0 if sex[i] == sex[j] else alpha_sex)
        k = min(max(k, 0.0), 1.0)
      g = gamma_same if site[i] == site[j] else gamma_diff
      w[i, j] = k * g + eps
      if i != j and rec[i] == rec[j]:
        w[i, j], h[i, j] = eps, 1.0
  for i in range(B):
    negatives = [j for j in range(B) if j != i and rec[j] != rec[i]]
    off = [j for j in range(B) if j != i]
    pool = negatives or off
    mean = sum(w[i, j] for j in pool) / len(pool) if pool else 1.0
    for j in off:
      w[i, j] /= mean
    w[i, i] = 1.0
  return w, h


def reference_loss(za, zb, w, h, T, hard_scale, valid=None):
  za = za / np.linalg.norm(za, axis=-1, keepdims=True)
  zb = zb / np.linalg.norm(zb, axis=-1, keepdims=True)
  B, L, _ = za.shape
  valid = np.ones((B, L), bool) if valid is None else valid
  total, count = 0.0, 0
  for l in range(L):
    cols = [j for j in range(B) if valid[j, l]]
    for i in cols:
      def ce(q, keys):
        logits = {j: float(q @ keys[j, l]) / T + math.log(w[i, j]) - hard_scale / T * h[i, j]
                  for j in cols}
        top = max(logits.values())
        return top + math.log(sum(math.exp(v - top) for v in logits.values())) - logits[i]
      total += 0.5 * (ce(za[i, l], zb) + ce(zb[i, l], za))
      count += 1
  return total / count


def _case(rng, B, L=4, P=8):
  return rng.normal(size=(B, L, P)), rng.normal(size=(B, L, P))


CASES = {
    "mixed": (np.array([30.0, 45, 61, 30, 72, 55]), np.array([0, 1, 1, 0, 1, 0]),
              np.array([0, 0, 1, 1, 2, 0]), np.array([0, 1, 2, 3, 4, 5])),
    "missing_age_sex_and_same_night": (np.array([30.0, np.nan, 61, 30, 72, np.nan]),
                                       np.array([0, 1, -1, 0, 1, -1]), np.array([0, 0, 1, 1, 2, 0]),
                                       np.array([0, 0, 2, 3, 3, 5])),
    "single_site": (np.array([20.0, 25, 80, 33, 47]), np.array([1, 1, 0, 0, 1]), np.zeros(5, int),
                    np.array([7, 8, 9, 10, 11])),
    "all_negatives_same_night": (np.array([50.0, 52, 49, 51]), np.array([0, 0, 1, 1]),
                                 np.array([3, 3, 3, 3]), np.array([4, 4, 4, 4])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dash_matches_float64_reference(case):
  rng = np.random.default_rng(sorted(CASES).index(case))
  age, sex, site, rec = CASES[case]
  w, h = dash_weights(age, sex, site, rec, **HP)
  w_ref, h_ref = reference_weights(age, sex, site, rec, **HP)
  np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(h), h_ref)
  za, zb = _case(rng, len(age))
  loss = dash_info_nce(za, zb, w, h, 0.2, 0.1)
  ref = reference_loss(za, zb, w_ref, h_ref, 0.2, 0.1)
  assert abs(float(loss) - ref) / abs(ref) <= 1e-5
  valid = rng.random((len(age), 4)) < 0.7
  valid[0] = True
  loss_v = dash_info_nce(za, zb, w, h, 0.2, 0.1, valid_BxW=valid)
  ref_v = reference_loss(za, zb, w_ref, h_ref, 0.2, 0.1, valid)
  assert abs(float(loss_v) - ref_v) / abs(ref_v) <= 1e-5


def test_plain_info_nce_is_the_unit_weight_case():
  rng = np.random.default_rng(9)
  za, zb = _case(rng, 5)
  ones, zeros = np.ones((5, 5)), np.zeros((5, 5))
  loss = dash_info_nce(za, zb, ones, zeros, 0.1, 0.1)
  np.testing.assert_allclose(float(loss), reference_loss(za, zb, ones, zeros, 0.1, 0.1), rtol=1e-5)


def test_weights_shape_the_loss():
  """Same-night negatives are pushed out; metadata-similar negatives weigh more."""
  age, sex, site = np.array([40.0, 40, 40, 40]), np.zeros(4, int), np.zeros(4, int)
  w_distinct, _ = dash_weights(age, sex, site, np.arange(4))
  w_same, h_same = dash_weights(age, sex, site, np.array([0, 0, 1, 2]))
  np.testing.assert_allclose(np.asarray(w_distinct), 1.0, rtol=1e-5)  # identical metadata
  assert float(w_same[0, 1]) < 1e-5 and h_same[0, 1] == 1 and h_same[0, 0] == 0
