"""The SleepLM (ReCoCa) family: signal-text contrastive + captioning + signal reconstruction.

Every 30-s epoch of the batch's windows is one sample. Each sample trains on one caption group
drawn per step among the groups whose caption is not empty (`objective.caption_groups="random"`),
or on all of them (`"all"`: each group's CLIP and caption losses, averaged).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from data_prep.captions import content_grid
from sleepjax.families.family import Family
from sleepjax.models.sleeplm.inputs import parse_channels
from sleepjax.models.sleeplm.model import GROUPS, SleepLM
from sleepjax.modalities import EPOCH_SECONDS
from sleepjax.objectives import sleeplm as objectives


_CONTENT_GRID = content_grid()  # numpy: built once, a constant of every traced loss


@dataclasses.dataclass(frozen=True)
class Objective:
  """`config.objective` as a hashable value the model carries (loss(model, batch, rng))."""
  lambda_con: float = 1.0
  lambda_cap: float = 2.0
  lambda_rec: float = 1.0
  caption_groups: str = "random"
  content_positives: bool = False  # configs before it existed trained without

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
  """-> x [N, C, S] z-scored 64 Hz channels, present [N, C]; N = B * W epochs."""
  x, present = model.inputs(batch["signals"], batch["masks"])
  B, W, K, S = x.shape
  return x.reshape(B * W, K, S), present.reshape(B * W, K)


def available_groups(caption_mask_NxGxL: jax.Array) -> jax.Array:
  """[N, G]: the caption says something (more than BOS + EOS)."""
  return caption_mask_NxGxL.sum(-1) > 2


def same_NxN(model: SleepLM, tokens_NxL, group_N, features_NxF) -> jax.Array:
  """Pairs that are not each other's negatives: identical captions and, with
  `objective.content_positives`, captions saying the same thing in other words (their paraphrase
  is a seeded draw no signal can tell)."""
  same = objectives.same_caption(tokens_NxL)
  if model.objective.content_positives:
    stated_GxF, per_unit_F = _CONTENT_GRID
    same |= objectives.same_caption(objectives.content_key(
        features_NxF, group_N, jnp.asarray(stated_GxF), jnp.asarray(per_unit_F)))
  return same


def group_terms(model: SleepLM, sig: dict, tokens_NxL, valid_NxL, group_N, row_N,
                features_NxF) -> dict:
  text = model.encode_text(tokens_NxL, valid_NxL)
  decoder = model.decoder
  h_NxLxD = decoder.features(decoder.hidden(text["states"], group_N, sig["memory"]))
  con, top1 = objectives.clip_loss(sig["latent"], text["latent"], row_N, model.log_scale(),
                                   same_NxN(model, tokens_NxL, group_N, features_NxF))
  cap, acc = objectives.projected_caption_loss(h_NxLxD, decoder.out.kernel[...], tokens_NxL,
                                               valid_NxL, row_N)
  return {"con": con, "cap": cap, "retrieval_top1": top1, "caption_token_acc": acc}


def loss(model: SleepLM, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  obj = model.objective
  x, present = flat_inputs(model, batch)
  N = x.shape[0]
  sig = model.encode_signal(x, present)
  captions = jnp.asarray(batch["captions"]).reshape(N, *batch["captions"].shape[2:])
  cmask = jnp.asarray(batch["caption_mask"]).reshape(captions.shape)
  avail_NxG = available_groups(cmask) & present.any(-1)[:, None]
  features = (jnp.asarray(batch["features"], jnp.float32).reshape(N, -1)
              if obj.content_positives else None)
  if obj.caption_groups == "random":
    group = jax.random.categorical(rng, jnp.where(avail_NxG, 0.0, -1e9))
    rows = jnp.arange(N)
    terms = group_terms(model, sig, captions[rows, group], cmask[rows, group], group,
                        avail_NxG[rows, group], features)
  else:
    per = [group_terms(model, sig, captions[:, g], cmask[:, g], jnp.full((N,), g),
                       avail_NxG[:, g], features) for g in range(captions.shape[1])]
    terms = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *per)
  metrics = {"loss_con": terms["con"], "loss_cap": terms["cap"],
             "retrieval_top1": terms["retrieval_top1"],
             "caption_token_acc": terms["caption_token_acc"],
             "logit_scale": jnp.exp(model.log_scale())}
  weighted = {"lambda_con": terms["con"], "lambda_cap": terms["cap"]}
  if model.recon is not None:
    metrics["loss_rec"] = objectives.recon_loss(model.reconstruct(sig["recon"]), x, present)
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
  M = s.decoder_tokens  # pooled tokens; the decoder's memory may hold more (Md)
  Md = M + {"pooled": 0, "pooled+channels": K, "pooled+tokens": K * (S // s.patch)}[s.decoder_memory]
  enc = n * (s.patch * s.conv_dim + s.conv_dim * d)
  enc += s.depth * (n * 2 * (4 * d * d + 3 * d * h) + T * K * K * d * 2 + K * T * T * d * 2)
  enc += 2 * n * 2 * d * d + (1 + M) * n * d * 2  # two poolers: keys/values + attention
  enc += M * 2 * d * d + 2 * d * d + M * d * 2 + d * P  # global token over the memory, projection
  dt, ht = t.width, int(t.width * t.mlp_ratio)
  text = t.depth * ((L + 1) * (4 * dt * dt + 2 * dt * ht) + (L + 1) ** 2 * dt * 2) + dt * P
  dd, hd, Q = dec.width, int(dec.width * dec.mlp_ratio), dec.prefix_len + L
  decoder = dec.depth * (Q * (4 * dd * dd + 2 * dd * hd) + Q * Q * dd * 2  # self
                         + Q * (2 * dd * dd + 2 * dd * hd) + Md * 2 * dd * dd + Q * Md * dd * 2)
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
  content = Objective.from_config(config).content_positives
  return ("captions", "caption_mask") + (("features",) if content else ())


FAMILY = Family(name="sleeplm", build=build, loss=loss, embed=embed, flops=flops, fields=fields)
