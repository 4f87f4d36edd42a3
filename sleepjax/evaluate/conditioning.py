"""Does the SleepLM caption decoder read the signal? Three measures on test epochs, each of which a
decoder that ignores its memory fails exactly:

- dependence: the next-token distribution after the same caption prefix (`PREFIX`) on two epochs
  of different stages; its KL divergence is 0 for a memory-blind decoder (reported beside the KL
  between epochs of the same stage, the within-stage variation);
- stage scoring through the decoder: log p(stage sentence | epoch) of every stage template
  (`data_prep.captions.STAGE_TEMPLATES`), log-sum-exp per stage: the scored stage's rank among the
  five (1 best; 3 for a blind decoder on average) and the argmax's macro-F1;
- generated stage_event captions: the fraction naming the scored stage (`named_stage`), beside the
  majority class's share;
- memory gain: the reference captions' loss (nats per token) with each epoch's own memory against
  the memory of an epoch of another stage (0 for a blind decoder).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleepjax.evaluate import metrics
from sleepjax.modalities import STAGES
from sleepjax.models.sleeplm import decode
from sleepjax.models.sleeplm.model import GROUPS

PREFIX = "Scored as"  # a stage template's opening that every stage shares; the next words name it
_STAGE_WORDS = ((0, re.compile(r"\b(wake|awake|wakefulness)\b", re.IGNORECASE)),
                (0, re.compile(r"\bW\b")), (1, re.compile(r"\bN1\b")),
                (2, re.compile(r"\bN2\b")), (3, re.compile(r"\bN3\b")),
                (4, re.compile(r"\bREM\b")))


def named_stage(text: str) -> int:
  """The stage code a caption names, -1 if it names none or several."""
  found = {k for k, pattern in _STAGE_WORDS if pattern.search(text)}
  return found.pop() if len(found) == 1 else -1


@nnx.jit  # at module level: traced once per segment length, not once per call
def _memory(model, signals, masks):
  x, present = model.inputs(signals, masks)
  return model.encode_signal(x[0], present[0])["memory"]


def memories(model, signals: dict, masks: dict) -> jax.Array:
  """Decoder memory [E, M, D] of one continuous segment: signals[m] [E, C, S], masks[m] [E, C]."""
  return _memory(model, {m: jnp.asarray(s, jnp.float32)[None] for m, s in signals.items()},
                 {m: jnp.asarray(k)[None] for m, k in masks.items()})


def next_token_logprobs(model, tokenizer, memory_NxMxD, prefix: str = PREFIX) -> np.ndarray:
  """[N, V] log p(next token | BOS + prefix, epoch's memory), stage_event group."""
  ids, valid = tokenizer.encode(prefix, 64)
  n_prefix = int(valid.sum()) - 1  # without the EOS
  N = memory_NxMxD.shape[0]
  tokens = jnp.asarray(np.repeat(ids, N, 0))
  logp = decode.token_logprobs(model, memory_NxMxD, jnp.full((N,), GROUPS.index("stage_event")),
                               tokens, jnp.asarray(np.repeat(valid, N, 0)))
  return np.asarray(logp[:, n_prefix - 1])


def pair_kl(logp_NxV: np.ndarray, stage_N: np.ndarray, seed: int = 0) -> dict:
  """Mean KL(p_i || p_j) over seeded pairs of epochs of different stages and of the same stage."""
  rng = np.random.default_rng(seed)
  ok = np.flatnonzero(stage_N >= 0)
  out = {}
  for name, want_same in (("different_stage", False), ("same_stage", True)):
    kls = []
    for i in ok:
      cands = ok[(stage_N[ok] == stage_N[i]) == want_same]
      cands = cands[cands != i]
      if len(cands):
        j = rng.choice(cands)
        p = np.exp(logp_NxV[i])
        kls.append(float((p * (logp_NxV[i] - logp_NxV[j])).sum()))
    out[f"kl_{name}"] = float(np.mean(kls)) if kls else float("nan")
    out[f"pairs_{name}"] = len(kls)
  return out


def stage_scores(model, tokenizer, memory_NxMxD, max_len: int = 32) -> np.ndarray:
  """[N, 5] log p(stage k's templates | epoch) (log-sum-exp over a stage's templates)."""
  from data_prep.captions import STAGE_TEMPLATES  # pylint: disable=g-import-not-at-top
  texts = [(k, t) for k in sorted(STAGE_TEMPLATES) for t in STAGE_TEMPLATES[k]]
  ids, valid = tokenizer.encode([t for _, t in texts], max_len)
  N, T = memory_NxMxD.shape[0], len(texts)
  memory = jnp.repeat(memory_NxMxD, T, 0)
  group = jnp.full((N * T,), GROUPS.index("stage_event"))
  lp = np.asarray(decode.sequence_logprob(model, memory, group, jnp.asarray(np.tile(ids, (N, 1))),
                                          jnp.asarray(np.tile(valid, (N, 1))))).reshape(N, T)
  owner = np.array([k for k, _ in texts])
  return np.stack([np.logaddexp.reduce(lp[:, owner == k], -1) for k in range(len(STAGES))], -1)


def memory_gain(model, tokenizer, memory_NxMxD, stage_N, texts, max_len: int = 64) -> dict:
  """Reference-caption loss per token with the epoch's own memory and with that of another
  epoch of a different stage (seeded pairing; epochs with no such partner are left out)."""
  rng = np.random.default_rng(0)
  rows, other = [], []
  for i in range(len(stage_N)):
    cands = np.flatnonzero(stage_N != stage_N[i])
    if len(cands):
      rows.append(i)
      other.append(rng.choice(cands))
  if not rows:
    return {}
  ids, valid = tokenizer.encode([texts[i] for i in rows], max_len)
  group = jnp.full((len(rows),), GROUPS.index("stage_event"))
  n = valid[:, 1:].sum()
  own = -float(decode.sequence_logprob(model, memory_NxMxD[np.array(rows)], group, ids,
                                       valid).sum()) / n
  swapped = -float(decode.sequence_logprob(model, memory_NxMxD[np.array(other)], group, ids,
                                           valid).sum()) / n
  return {"nll_own_memory": own, "nll_other_stage_memory": swapped, "memory_gain": swapped - own}


def conditioning(model, tokenizer, segments, max_caption_len: int = 48) -> dict:
  """All four measures over `segments`: (signals, masks, stages [E], stage_event reference
  captions [E]) of continuous test segments."""
  mems, stages, named, texts = [], [], [], []
  for signals, masks, stage, refs in segments:
    mem = memories(model, signals, masks)
    present = np.stack([k.any(-1) for k in masks.values()], 1).any(1)
    keep = np.flatnonzero(present & (np.asarray(stage) >= 0))
    if not len(keep):
      continue
    mems.append(mem[keep])
    stages.append(np.asarray(stage)[keep])
    texts += [refs[i] for i in keep]
    ids = decode.greedy_jit(model, mem[keep], jnp.full((len(keep),), GROUPS.index("stage_event")),
                             max_len=max_caption_len)
    named += [named_stage(t) for t in tokenizer.decode(jax.device_get(ids))]
  memory, y = jnp.concatenate(mems), np.concatenate(stages)
  named = np.array(named)
  scores = stage_scores(model, tokenizer, memory)
  rank = 1 + (scores > scores[np.arange(len(y)), y][:, None]).sum(-1)
  pred = scores.argmax(-1)
  return {"epochs": len(y), "majority_class": float(np.bincount(y).max() / len(y)),
          "caption_names_stage": float((named == y).mean()),
          "caption_names_no_single_stage": float((named < 0).mean()),
          "caption_stage_counts": {STAGES[k]: int((named == k).sum()) for k in range(len(STAGES))},
          "prefix": PREFIX, **pair_kl(next_token_logprobs(model, tokenizer, memory), y),
          "decoder_stage_rank": float(rank.mean()),
          "decoder_stage_accuracy": float((pred == y).mean()),
          "decoder_stage_macro_f1": metrics.macro_f1(y, pred, len(STAGES)),
          **memory_gain(model, tokenizer, memory, y, texts)}
