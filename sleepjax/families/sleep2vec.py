"""The sleep2vec family: cross-modal contrastive pretraining (DAS-H InfoNCE by default)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.families.family import Family
from sleepjax.models.sleep2vec import Sleep2Vec
from sleepjax.modalities import EPOCH_SECONDS
from sleepjax.objectives import infonce


@dataclasses.dataclass(frozen=True)
class Objective:
  """`config.objective` (+ `model.mask_fraction`) as a hashable value the model carries, so that
  `loss(model, batch, rng)` needs no config."""
  loss: str = "dash"
  pair_strategy: str = "pair_first"
  negatives: str = "per_step"
  temperature: float = 0.2
  hard_scale: float = 0.1
  sigma_age: float = 20.0
  alpha_sex: float = 0.8
  gamma_same: float = 1.3
  gamma_diff: float = 0.8
  eps: float = 1e-6
  mask_fraction: float = 0.15

  @classmethod
  def from_config(cls, config) -> "Objective":
    values = {f.name: config.objective[f.name] for f in dataclasses.fields(cls)
              if f.name in config.objective}
    values["mask_fraction"] = config.model.mask_fraction
    objective = cls(**values)
    infonce.check(objective)
    return objective


def build(config, modalities: dict[str, tuple[int, int]], rngs: nnx.Rngs) -> Sleep2Vec:
  model = Sleep2Vec(modalities, config.model, rngs=rngs)
  model.objective = Objective.from_config(config)
  return model


def draw_pair(model: Sleep2Vec, batch: dict, rng: jax.Array) -> dict:
  """pair_first on a batch that carries more than two modalities (`data.modality_sampling` other
  than pair_first): one pair per global batch, uniform among the pairs present together in at
  least one epoch of the batch (any pair if none is), as the reference draws one pair per batch.

  It runs on the global batch before any micro-batch split (`train/gradcache.py`), so every
  micro-batch and device encodes the same two modalities. The pair rides in the batch as int
  [B, 2] (every row the same, so it splits with the batch): `batch["pair"]`. A batch of two
  modalities, one that carries its pair already (`data.pair_keys="all"`), or another pair
  strategy is returned unchanged.
  """
  names = [m for m in model.names if m in batch["masks"]]
  if model.objective.pair_strategy != "pair_first" or len(names) <= 2 or "pair" in batch:
    return batch
  present_MxBxW = jnp.stack([batch["masks"][m].any(-1) for m in names])
  pairs = list(itertools.combinations(range(len(names)), 2))
  together_A = jnp.stack([(present_MxBxW[a] & present_MxBxW[b]).any() for a, b in pairs])
  logits_A = jnp.where(together_A | ~together_A.any(), 0.0, -jnp.inf)
  pair_2 = jnp.asarray(pairs, jnp.int32)[jax.random.categorical(rng, logits_A)]
  B = present_MxBxW.shape[1]
  return {**batch, "pair": jnp.broadcast_to(pair_2, (B, 2))}


def encode(model: Sleep2Vec, batch: dict, rng: jax.Array) -> dict:
  """Per-example part of the loss: the transformer's tokens [B, M, W, D] and presence [B, M, W].
  A batch with a pair (`draw_pair`, or pair-first batches with `data.pair_keys="all"`) encodes
  only that pair, as a batch of the pair's modalities alone would; pair_first over more than two
  modalities needs one."""
  objective = model.objective
  select = None
  if "pair" in batch:
    select = batch["pair"][0]
  elif objective.pair_strategy == "pair_first" and len(batch["masks"]) > 2:
    raise ValueError("pair_first over more than two modalities needs the batch's pair "
                     "(`draw_pair` on the global batch before encoding)")
  out = model.encode(batch["signals"], batch["masks"], rng=rng,
                     mask_fraction=objective.mask_fraction, select=select)
  return {"tokens": out["tokens"], "present": out["present"]}


def loss_from(model: Sleep2Vec, emb: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  """Whole-batch part: the projection head (its BatchNorm needs the whole batch) and the loss."""
  del rng
  z_BxMxWxP = model.project(emb["tokens"], emb["present"])
  return infonce.contrastive_loss(z_BxMxWxP, emb["present"], batch, model.objective)


def loss(model: Sleep2Vec, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  pair_rng, rng = jax.random.split(rng)
  batch = draw_pair(model, batch, pair_rng)
  return loss_from(model, encode(model, batch, rng), batch, rng)


def embed(model: Sleep2Vec, batch: dict) -> dict:
  """"epoch" [B, W, D] (mean over present modalities), "per_modality" [B, M, W, D] and "present"
  [B, M, W] for the batch's modalities in the model's order (`model.names` filtered)."""
  out = model.encode(batch["signals"], batch["masks"])
  return {"epoch": model.fuse(out["tokens"], out["present"]), "per_modality": out["tokens"],
          "present": out["present"]}


def tokenizer_flops(model_config, rate: int, channels: int) -> tuple[float, float]:
  """Forward matmul FLOPs per token of one modality's tokenizer (+ width projection):
  (matmuls that read the raw signal, the rest). The former need no input gradient in the
  backward pass (the signal is data), so training costs them 2x, not 3x, their forward FLOPs."""
  d = model_config.width
  dt = model_config.signal_tokenizer_width or d
  if model_config.signal_tokenizer == "epoch":
    n_in = channels * rate * EPOCH_SECONDS
    first, rest = 2 * (n_in * 2 * dt + n_in * dt), 2 * (2 * dt * dt)
  else:
    feats, patch = model_config.stem_features, rate * model_config.patch_seconds
    n_patches = channels * EPOCH_SECONDS // model_config.patch_seconds
    first = 2 * n_patches * patch * feats
    rest = 2 * n_patches * feats * feats + 2 * channels * 2 * feats * dt
  return first, rest + (2 * dt * d if dt != d else 0)


def flops(config, modalities: dict[str, tuple[int, int]], global_batch: int, window: int, *,
          encoded: tuple[str, ...] | None = None) -> float:
  """Analytic training FLOPs per step: 3 x the forward matmul FLOPs (tokenizers, transformer incl.
  attention scores and values, projection head, contrastive logits), except 2 x for the matmuls
  that read the raw signal (no input gradient).

  `encoded`: the modalities a step encodes; default: all of them, except pair_first (two, with
  the tokenizer cost averaged over uniformly drawn pairs).
  """
  m, obj = config.model, config.objective
  d, depth, mlp, W = m.width, m.depth, m.mlp, window
  hidden, proj = m.proj_hidden or d, m.proj_dim
  layer = 2 * (4 * d * d + 2 * d * mlp) + 2 * 2 * W * d
  per_token = depth * layer + 2 * (d * hidden + hidden * proj)
  tok = {name: tokenizer_flops(m, rate, ch) for name, (rate, ch) in modalities.items()}
  train_tok = {name: 2 * first + 3 * rest for name, (first, rest) in tok.items()}
  if encoded is not None:
    n_enc, tok_total = len(encoded), sum(train_tok[n] for n in encoded)
  elif obj.pair_strategy == "pair_first":
    n_enc, tok_total = 2, 2 * sum(train_tok.values()) / len(train_tok)
  else:
    n_enc, tok_total = len(tok), sum(train_tok.values())
  n_pairs = {"pair_first": 1, "all_pairs": n_enc * (n_enc - 1) // 2,
             "leave_one_out": n_enc}[obj.pair_strategy]
  B = global_batch
  logits = {"per_step": 2 * B * B * W, "within_window": 2 * B * W * W}.get(
      obj.negatives, 2 * (B * W) ** 2) * proj
  return B * W * (3 * n_enc * per_token + tok_total) + 3 * n_pairs * logits


def fields(config) -> tuple[str, ...]:
  return infonce.metadata_fields(Objective.from_config(config))


FAMILY = Family(name="sleep2vec", build=build, loss=loss, embed=embed, flops=flops, fields=fields,
                encode=encode, loss_from=loss_from, prepare=draw_pair)
