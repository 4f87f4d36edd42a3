"""Subject-level train/val/test splits: one subject never appears in two splits.

A subject's split is a pure function of (subject id, seed, fractions): SHA-256 of "<seed>:<id>"
read as a number u uniform in [0, 1), cut at the cumulative fractions (splits in sorted name
order, e.g. test, train, val; fractions normalised over the positive ones). Adding or removing subjects never moves another subject, and
a re-prep with the same seed and fractions reproduces every assignment. Split sizes are therefore
only close to the fractions (binomial); a tiny cohort may leave a split empty, which `prep` says.
"""

import hashlib
import json

RULE = ("first 8 bytes of sha256('<seed>:<subject>') / 2**64, cut at the cumulative split "
        "fractions in sorted split-name order")


def subject_unit(subject: str, seed: int) -> float:
  """The subject's position in [0, 1): uniform over subjects, fixed per (subject, seed)."""
  digest = hashlib.sha256(f"{seed}:{subject}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of(subject: str, fractions: dict[str, float], seed: int) -> str:
  names = sorted(k for k, f in fractions.items() if f > 0)
  if not names:
    raise ValueError(f"split fractions {fractions} have no positive entry")
  total = sum(fractions[k] for k in names)
  u, edge = subject_unit(subject, seed), 0.0
  for k in names:
    edge += fractions[k] / total
    if u < edge:
      return k
  return names[-1]  # rounding of the last edge


def assign_splits(subjects: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
  """Returns {subject: split} for every distinct subject."""
  return {s: split_of(s, fractions, seed) for s in sorted(set(subjects))}


def split_hash(assignment: dict[str, str]) -> str:
  """SHA-256 of the sorted (subject, split) pairs: equal hashes, equal splits."""
  text = json.dumps(sorted(assignment.items()), separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()
