"""Which records a step sees: modality-aware sampling for contrastive pretraining.

Strategies (`data.modality_sampling`):
  all          every record, masks as recorded
  all_present  only records whose recording has every requested modality
  pair_first   sleep2vec: each global batch picks a modality pair (uniform or `data.pair_weights`),
               then draws records that have both; the batch carries only that pair's keys
               (`data.pair_keys="all"`: every modality's, only the pair read, + the pair);
               a `PairShare` (`sleepjax adapt`) sets, step by step, the share of pairs that
               involve the newly added modalities
  dropout      every record; each present modality is masked with prob `data.modality_dropout`,
               keeping at least `data.min_modalities`
Recording-level presence comes from the manifest, so choosing records reads no data.
"""

import dataclasses
import difflib
import itertools

import grain
import numpy as np


def record_presence(manifest: dict, split: str, modalities: list[str]) -> np.ndarray:
  """bool [records, M]: does record i's recording have any channel of modality m."""
  rows = []
  for rid in manifest["splits"][split]["recordings"]:
    rec = manifest["recordings"][rid]
    rows += [[any(rec["present"][m]) for m in modalities]] * rec["segments"]
  return np.asarray(rows, bool).reshape(-1, len(modalities))


def subject_subset(manifest: dict, split: str, fraction: float) -> np.ndarray:
  """bool [records]: the records of the first ceil(fraction * subjects) subjects of the split in a
  fixed seeded order (`data.subject_fraction`, data-scaling sweeps). Smaller fractions are subsets
  of larger ones, and every run with the same fraction sees the same subjects."""
  recordings = manifest["splits"][split]["recordings"]
  subjects = sorted({manifest["recordings"][rid]["subject"] for rid in recordings})
  if not 0 < fraction <= 1:
    raise ValueError(f"data.subject_fraction={fraction} must be in (0, 1]")
  order = np.random.default_rng(0).permutation(len(subjects))
  keep = {subjects[i] for i in order[:max(1, int(np.ceil(fraction * len(subjects) - 1e-9)))]}
  return np.concatenate([np.full(manifest["recordings"][rid]["segments"],
                                 manifest["recordings"][rid]["subject"] in keep)
                         for rid in recordings] or [np.zeros(0, bool)])


def pair_table(presence_RxM: np.ndarray, modalities: list[str], weights: dict[str, float] | None):
  """Usable pairs, their probabilities and the records that have both modalities of each."""
  pairs, probs, members = [], [], []
  if weights:  # a typo must not silently weigh a pair 0
    known = [f"{a}+{b}" for a, b in itertools.permutations(modalities, 2)]
    for key in weights:
      if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        raise ValueError(f"data.pair_weights: unknown pair {key!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; pairs are <a>+<b> of {', '.join(modalities)}")
  for a, b in itertools.combinations(range(len(modalities)), 2):
    idx = np.flatnonzero(presence_RxM[:, a] & presence_RxM[:, b])
    w = 1.0 if weights is None else float(weights.get(f"{modalities[a]}+{modalities[b]}",
                                                      weights.get(f"{modalities[b]}+{modalities[a]}", 0.0)))
    if len(idx) and w > 0:
      pairs.append((a, b)), probs.append(w), members.append(idx)
  if not pairs:
    raise ValueError("pair_first sampling: no modality pair is present in any record "
                     f"(modalities {modalities}, weights {weights})")
  probs = np.asarray(probs) / np.sum(probs)
  return pairs, probs, members


@dataclasses.dataclass(frozen=True)
class PairShare:
  """The share of pairs involving a `new` modality: `share[i]` at fraction `at[i]` of `steps`,
  linear in between, `share[0]` before `at[0]` (sleep2vec's adapt: 1.0, 0.7, 0.0 at 25/50/100 %)."""
  new: tuple[str, ...]
  at: tuple[float, ...]
  share: tuple[float, ...]
  steps: int

  def __call__(self, step: int) -> float:
    return float(np.interp(step / max(self.steps, 1), self.at, self.share))


def pair_probs(probs_P: np.ndarray, new_P: np.ndarray, share: float) -> np.ndarray:
  """`probs_P` reweighted so pairs with `new_P` get `share` of the mass (as they relate inside
  each side); a side without pairs hands its mass to the other."""
  new_P = np.asarray(new_P, bool)
  p_new, p_old = probs_P * new_P, probs_P * ~new_P
  if not p_new.sum():
    return probs_P
  if not p_old.sum():
    return p_new / p_new.sum()
  return share * p_new / p_new.sum() + (1 - share) * p_old / p_old.sum()


@dataclasses.dataclass(frozen=True)
class PairFirstIndex(grain.transforms.MapWithIndex):
  """Global example index -> (record index, pair). One pair per global batch, same on every host."""
  pairs: tuple
  probs: np.ndarray
  members: tuple
  local_batch: int
  seed: int
  process_index: int
  share: PairShare | None = None  # anneals the share of pairs with a new modality
  new_P: tuple[bool, ...] = ()  # per pair: does it involve a `share.new` modality

  def map_with_index(self, index: int, _) -> tuple[int, int]:
    step, offset = divmod(index, self.local_batch)
    probs = self.probs if self.share is None else pair_probs(self.probs, self.new_P,
                                                             self.share(step))
    pair = np.random.default_rng([self.seed, step]).choice(len(self.pairs), p=probs)
    rng = np.random.default_rng([self.seed, step, self.process_index, offset])
    candidates = self.members[pair]
    return int(candidates[rng.integers(len(candidates))]), int(pair)


def drop_modalities(batch: dict, modalities: tuple[str, ...], rate: float, min_modalities: int,
                    rng: np.random.Generator):
  """Masks each record's present modalities with probability `rate`, in place, keeping at least
  `min_modalities` of them (all of them where a record has fewer)."""
  present_BxM = np.stack([batch[f"masks/{m}"].any(axis=(1, 2)) for m in modalities], 1)
  for b, present in enumerate(present_BxM):
    have = np.flatnonzero(present)
    drop = have[rng.random(len(have)) < rate]
    excess = len(have) - len(drop) - min_modalities
    if excess < 0:  # give some back to keep the minimum
      drop = rng.permutation(drop)[:max(len(drop) + excess, 0)]
    for j in drop:
      batch[f"masks/{modalities[j]}"][b] = False
