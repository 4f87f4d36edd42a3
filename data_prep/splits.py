"""Subject-level train/val/test splits: one subject never appears in two splits."""

import numpy as np


def assign_splits(subjects: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
  """Returns {subject: split}. Every split with a positive fraction gets >= 1 subject when possible."""
  unique = sorted(set(subjects))
  order = np.random.default_rng(seed).permutation(len(unique))
  names = [k for k, f in fractions.items() if f > 0]
  total = sum(fractions[k] for k in names)
  exact = {k: fractions[k] / total * len(unique) for k in names}
  counts = {k: int(np.floor(v)) for k, v in exact.items()}
  for k in sorted(names, key=lambda k: counts[k] - exact[k])[:len(unique) - sum(counts.values())]:
    counts[k] += 1  # largest remainders first
  for k in names:  # small cohorts: an empty split takes one subject from the largest
    largest = max(names, key=counts.get)
    if counts[k] == 0 and counts[largest] > 1:
      counts[k], counts[largest] = 1, counts[largest] - 1
  out, i = {}, 0
  for k in names:
    for j in order[i:i + counts[k]]:
      out[unique[j]] = k
    i += counts[k]
  return out
