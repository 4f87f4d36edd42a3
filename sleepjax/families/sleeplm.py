"""The SleepLM (ReCoCa) family: signal-text contrastive + captioning + signal reconstruction.

Every 30-s epoch of the batch's windows is one sample. Each sample trains on one caption group
drawn per step among the groups whose caption is not empty (`objective.caption_groups="random"`),
or on all of them (`"all"`: each group's CLIP and caption losses, averaged).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleepjax.families.family import Family
from sleepjax.models.sleeplm.inputs import parse_channels
from sleepjax.models.sleeplm.model import GROUPS, SleepLM
from sleepjax.modalities import EPOCH_SECONDS
from sleepjax.objectives import sleeplm as objectives


@dataclasses.dataclass(frozen=True)
class Objective:
  """`config.objective` as a hashable value the model carries (loss(model, batch, rng))."""
  lambda_con: float = 1.0
  lambda_cap: float = 2.0
  lambda_rec: float = 1.0
  caption_groups: str = "random"

  @classmethod
  def from_config(cls, config) -> "Objective":
    obj = cls(**{f.name: config.objective[f.name] for f in dataclasses.fields(cls)
                 if f.name in config.objective})
    if obj.caption_groups not in ("random", "all"):
      raise ValueError(f"objective.caption_groups={obj.caption_groups!r} (random, all)")
    return obj


def vocab_size(config) -> int:
  return int(config.text.vocab_size)


def build(config, modalities: dict[str, tuple[int, int]], rngs: nnx.Rngs) -> SleepLM:
  del modalities  # the channel list (config) picks what the encoder reads; absent ones are masked
  model = SleepLM(config.model, vocab_size(config), rngs=rngs)
  model.objective = Objective.from_config(config)
  return model


def flat_inputs(model: SleepLM, batch: dict) -> tuple[jax.Array, jax.Array]:
  """-> x [N, K, S] z-scored 64 Hz channels, present [N, K]; N = B * W epochs."""
  x, present = model.inputs(batch["signals"], batch["masks"])
  B, W, K, S = x.shape
  return x.reshape(B * W, K, S), present.reshape(B * W, K)


def available_groups(caption_mask_NxGxL: jax.Array) -> jax.Array:
  """[N, G]: the caption says something (more than BOS + EOS)."""
  return caption_mask_NxGxL.sum(-1) > 2


def group_terms(model: SleepLM, sig: dict, tokens_NxL, valid_NxL, group_N, row_N) -> dict:
  text = model.encode_text(tokens_NxL, valid_NxL)
  logits = model.decoder(text["states"], group_N, sig["memory"])
  con, top1 = objectives.clip_loss(sig["latent"], text["latent"], row_N, model.log_scale(),
                                   objectives.same_caption(tokens_NxL))
  cap, acc = objectives.caption_loss(logits, tokens_NxL, valid_NxL, row_N)
  return {"con": con, "cap": cap, "retrieval_top1": top1, "caption_token_acc": acc}


def loss(model: SleepLM, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  obj = model.objective
  x, present = flat_inputs(model, batch)
  N = x.shape[0]
  sig = model.encode_signal(x, present)
  captions = jnp.asarray(batch["captions"]).reshape(N, *batch["captions"].shape[2:])
  cmask = jnp.asarray(batch["caption_mask"]).reshape(captions.shape)
  avail_NxG = available_groups(cmask) & present.any(-1)[:, None]
  if obj.caption_groups == "random":
    group = jax.random.categorical(rng, jnp.where(avail_NxG, 0.0, -1e9))
    rows = jnp.arange(N)
    terms = group_terms(model, sig, captions[rows, group], cmask[rows, group], group,
                        avail_NxG[rows, group])
  else:
    per = [group_terms(model, sig, captions[:, g], cmask[:, g], jnp.full((N,), g),
                       avail_NxG[:, g]) for g in range(captions.shape[1])]
    terms = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *per)
  metrics = {"loss_con": terms["con"], "loss_cap": terms["cap"],
             "retrieval_top1": terms["retrieval_top1"],
             "caption_token_acc": terms["caption_token_acc"],
             "logit_scale": jnp.exp(model.log_scale())}
  weighted = {"lambda_con": terms["con"], "lambda_cap": terms["cap"]}
  if model.recon is not None:
    metrics["loss_rec"] = objectives.recon_loss(model.reconstruct(sig["memory"]), x, present)
    weighted["lambda_rec"] = metrics["loss_rec"]
  total = objectives.combine(weighted, dataclasses.asdict(obj))
  return total, metrics


def embed(model: SleepLM, batch: dict) -> dict:
  """"epoch" [B, W, D] (the global pooled token), "signal" [B, W, P] unit contrastive
  embeddings, "present" [B, W] (any channel present)."""
  x, present = flat_inputs(model, batch)
  B, W = batch["masks"][next(iter(batch["masks"]))].shape[:2]
  sig = model.encode_signal(x, present)
  return {"epoch": sig["pooled"].astype(jnp.float32).reshape(B, W, -1),
          "signal": objectives.l2_normalize(sig["latent"]).reshape(B, W, -1),
          "present": present.any(-1).reshape(B, W)}


def forward_macs(config) -> dict:
  """Multiply-accumulates of one sample's forward pass, per component (attention included)."""
  m = config.model
  s, t, dec = m.signal, m.text, m.decoder
  K, S, P, V = len(parse_channels(m.channels)), m.rate * EPOCH_SECONDS, m.embed_dim, vocab_size(config)
  L = config.data.caption_len
  d, T = s.width, S // s.patch
  n = K * T
  h = int(d * s.mlp_ratio)
  M = s.decoder_tokens
  enc = n * (s.patch * s.conv_dim + s.conv_dim * d)
  enc += s.depth * (n * 2 * (4 * d * d + 3 * d * h) + T * K * K * d * 2 + K * T * T * d * 2)
  enc += 2 * n * 2 * d * d + (1 + M) * n * d * 2  # two poolers: keys/values + attention
  enc += M * 2 * d * d + 2 * d * d + M * d * 2 + d * P  # global token over the memory, projection
  dt, ht = t.width, int(t.width * t.mlp_ratio)
  text = t.depth * ((L + 1) * (4 * dt * dt + 2 * dt * ht) + (L + 1) ** 2 * dt * 2) + dt * P
  dd, hd, Q = dec.width, int(dec.width * dec.mlp_ratio), dec.prefix_len + L
  decoder = dec.depth * (Q * (4 * dd * dd + 2 * dd * hd) + Q * Q * dd * 2  # self
                         + Q * (2 * dd * dd + 2 * dd * hd) + M * 2 * dd * dd + Q * M * dd * 2)
  decoder += L * dd * V
  recon = 0
  if m.recon_depth:
    recon = m.recon_depth * (M * (4 * d * d + 2 * d * 2 * d) + M * M * d * 2)
    recon += d * (d // 2) + (d // 2) * K * S
  return {"signal": enc, "text": text, "decoder": decoder, "recon": recon}


def flops(config, modalities, global_batch: int, window: int) -> float:
  """Analytic training FLOPs per step: 3 x 2 x forward MACs per epoch x epochs, + CLIP logits."""
  del modalities
  macs = forward_macs(config)
  groups = len(GROUPS) if Objective.from_config(config).caption_groups == "all" else 1
  n = global_batch * window
  per_sample = macs["signal"] + macs["recon"] + groups * (macs["text"] + macs["decoder"])
  return 3.0 * 2.0 * (n * per_sample + groups * n * n * config.model.embed_dim)


def fields(config) -> tuple[str, ...]:
  del config
  return ("captions", "caption_mask")


# ------------------------------------------------------------------ zero-shot staging, retrieval
def stage_prompts() -> dict[int, tuple[str, ...]]:
  """Stage code -> prompts in the caption language (the stage_event captions' own sentences)."""
  from data_prep.captions import STAGE_TEMPLATES  # pylint: disable=g-import-not-at-top
  return dict(STAGE_TEMPLATES)


def text_embeddings(model: SleepLM, tokenizer, texts, max_len: int) -> np.ndarray:
  """Unit text embeddings [len(texts), P]."""
  ids, mask = tokenizer.encode(list(texts), max_len)
  latent = nnx.jit(lambda m, i, k: m.encode_text(i, k)["latent"])(model, ids, mask)
  return np.asarray(objectives.l2_normalize(latent))


def stage_classifier(model: SleepLM, tokenizer, max_len: int) -> np.ndarray:
  """[stages, P]: per stage the normalised mean of its prompts' unit embeddings."""
  prompts = stage_prompts()
  stages = sorted(prompts)
  texts = [t for k in stages for t in prompts[k]]
  owner = np.array([k for k in stages for _ in prompts[k]])
  unit = text_embeddings(model, tokenizer, texts, max_len)  # one call: one compilation
  rows = np.stack([unit[owner == k].mean(0) for k in stages])
  return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def zero_shot_stage(signal_NxP: np.ndarray, classifier_KxP: np.ndarray) -> np.ndarray:
  """Predicted stage per epoch: argmax cosine similarity against the stage prompts."""
  return np.argmax(np.asarray(signal_NxP) @ classifier_KxP.T, -1)


# The stage a stage_event caption names (data_prep.captions.STAGE_TEMPLATES' words).
STAGE_PATTERNS = ((0, r"\b(?:[Ww]ake|awake|W)\b"), (1, r"\bN1\b"), (2, r"\bN2\b"),
                  (3, r"\bN3\b"), (4, r"\bREM\b"))


def caption_stage(text: str) -> int:
  """Stage code a caption names; -1 when it names none or several."""
  named = [k for k, pattern in STAGE_PATTERNS if re.search(pattern, text)]
  return named[0] if len(named) == 1 else -1


def retrieval_top1(signal_NxP: np.ndarray, text_NxP: np.ndarray) -> float:
  """signal -> text top-1 accuracy among the N pairs (chance 1/N)."""
  sim = np.asarray(signal_NxP) @ np.asarray(text_NxP).T
  return float((np.argmax(sim, 1) == np.arange(len(sim))).mean())


FAMILY = Family(name="sleeplm", build=build, loss=loss, embed=embed, flops=flops, fields=fields)


def text_report(config, workdir: str, split: str | None = None, pool: int = 32) -> dict:
  """Zero-shot staging, signal->text retrieval and the stage named by generated stage_event
  captions (greedy) on a held-out split (default eval.test_split), from the latest checkpoint.

  Retrieval: pools of `pool` epochs, each epoch's signal against the pool's stage_event captions;
  a hit when the retrieved caption's text equals the epoch's own (identical texts are equally
  right); `chance` is the same measure for a random pick.
  """
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  from sleepjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sleepjax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  from sleepjax.modalities import STAGES  # pylint: disable=g-import-not-at-top
  split = split or config.eval.test_split
  config, model, manifest, tokenizer, step = generate.restore_model(config, workdir)
  group = GROUPS.index("stage_event")
  L = config.data.caption_len
  signal_fn = nnx.jit(lambda m, b: embed(m, b)["signal"])
  text_fn = nnx.jit(lambda m, i, k: objectives.l2_normalize(m.encode_text(i, k)["latent"]))
  inputs_fn = nnx.jit(flat_inputs)
  ds = pipeline.make_dataset(manifest, split, list(config.prep.modalities), local_batch=8, seed=0,
                             train=False, caption_len=L, read_threads=config.data.read_threads)
  sig, txt, ids, stages, generated = [], [], [], [], []
  for local in ds:
    batch = pipeline.nest(local)
    sig.append(np.asarray(signal_fn(model, batch)).reshape(-1, config.model.embed_dim))
    x, present = inputs_fn(model, batch)
    tokens = generate.caption(model, x, present, jnp.full((x.shape[0],), group),
                              max_len=config.eval.max_caption_len)
    generated.extend(caption_stage(t) for t in tokenizer.decode(jax.device_get(tokens)))
    cap = local["captions"][:, :, group].reshape(-1, L)
    txt.append(np.asarray(text_fn(model, cap, cap != 0)))
    ids.append(cap)
    stages.append(local["stage"].reshape(-1))
  sig, txt, ids, stages = map(np.concatenate, (sig, txt, ids, stages))
  predicted = zero_shot_stage(sig, stage_classifier(model, tokenizer, L))
  k = len(STAGES)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(sig))
  hits, chance = [], []
  for start in range(0, len(order) - pool + 1, pool):
    idx = order[start:start + pool]
    same = (ids[idx][:, None, :] == ids[idx][None, :, :]).all(-1)  # [pool, pool] same text
    pick = np.argmax(sig[idx] @ txt[idx].T, 1)
    hits.extend(same[np.arange(pool), pick])
    chance.extend(same.mean(1))
  scored = stages >= 0
  named = np.asarray(generated)
  return {
      "checkpoint_step": step, "split": split, "epochs": int(len(sig)),
      "zero_shot": {"accuracy": metrics.accuracy(stages, predicted),
                    "macro_f1": metrics.macro_f1(stages, predicted, k),
                    "kappa": metrics.cohen_kappa(stages, predicted, k),
                    "chance_accuracy": float(np.bincount(stages[scored], minlength=k).max()
                                             / max(scored.sum(), 1))},
      "caption_stage": {"accuracy": metrics.accuracy(stages, named),
                        "unnamed": float(np.mean(named[scored] < 0)) if scored.any() else 0.0},
      "retrieval": {"pool": pool, "top1": float(np.mean(hits)) if hits else float("nan"),
                    "chance": float(np.mean(chance)) if chance else float("nan")},
  }


def format_text_report(r: dict) -> str:
  z, t, c = r["zero_shot"], r["retrieval"], r["caption_stage"]
  return "\n".join([
      f"SleepLM on held-out {r['split']} epochs ({r['epochs']}, checkpoint step "
      f"{r['checkpoint_step']})",
      f"zero-shot staging (stage prompts, cosine): accuracy {z['accuracy']:.3f} (majority class "
      f"{z['chance_accuracy']:.3f}), macro-F1 {z['macro_f1']:.3f}, kappa {z['kappa']:.3f}",
      f"signal->text retrieval, pools of {t['pool']}: top-1 {t['top1']:.3f} (chance "
      f"{t['chance']:.3f})",
      f"generated stage_event captions (greedy) name the scored stage: accuracy "
      f"{c['accuracy']:.3f} (majority class {z['chance_accuracy']:.3f}; no single stage named "
      f"{c['unnamed']:.3f})"])
