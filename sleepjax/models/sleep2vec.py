"""sleep2vec: per-modality tokenizers, one shared transformer, a per-token projection head.

A token is one 30-s epoch of one modality. Each modality's window of W epochs runs through the
shared transformer separately (late fusion); absent epochs take no part in attention. During
pretraining a learnable per-modality mask token replaces a fraction of the present tokens.
The model encodes exactly the modalities it is given (any subset of the ones it was built for).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import DTYPES, dense, layer_norm
from sleepjax.models.signal_tokenizer import make_signal_tokenizer
from sleepjax.models.transformer import Transformer
from sleepjax.sharding import constrain

_TOKENS = ("activation_batch", "activation_time", "activation_embed")


def masked_mean(x, valid, axes):
  """Mean of x over `axes` where `valid` (broadcast against x), safe when nothing is valid."""
  v = jnp.broadcast_to(valid, x.shape).astype(jnp.float32)
  return (x * v).sum(axes, keepdims=True) / jnp.maximum(v.sum(axes, keepdims=True), 1.0)


class MaskedBatchNorm(nnx.Module):
  """BatchNorm of per-token features [B, M, W, F] with statistics per modality slot m, over the
  present tokens (b, w) of the batch (no running statistics).

  Per modality because the reference applies its head to each modality on its own: pooled
  statistics would leave a modality's offset in its projections as a per-dimension bias. Under
  jit with a batch-sharded input the mean over the batch axis is global (XLA reduces over
  devices and hosts), as the reference's synchronised BatchNorm. The projection head is only used
  by the contrastive loss, so batch statistics are always used, in training and in evaluation
  alike; embeddings for downstream use come from the encoder, before the head.
  """

  def __init__(self, d: int, *, rngs: nnx.Rngs, axis: str = "proj", eps: float = 1e-5):
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (axis,))(
        rngs.params(), (d,), jnp.float32))
    self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (axis,))(
        rngs.params(), (d,), jnp.float32))
    self.eps = eps

  def __call__(self, x_BxMxWxF, valid_BxMxW):
    x_BxMxWxF = x_BxMxWxF.astype(jnp.float32)
    axes = (0, 2)  # batch and time: one mean and variance per modality slot and feature
    mean = masked_mean(x_BxMxWxF, valid_BxMxW[..., None], axes)
    var = masked_mean(jnp.square(x_BxMxWxF - mean), valid_BxMxW[..., None], axes)
    return (x_BxMxWxF - mean) * jax.lax.rsqrt(var + self.eps) * self.scale.value + self.bias.value


class ProjectionHead(nnx.Module):
  """Linear -> Norm -> ReLU -> Linear(proj) -> Norm, per token; `norm` = batch | layer.

  With BatchNorm (the reference's head) the linears carry no bias: the norm's mean subtraction
  removes it, so it would only be a parameter with zero gradient that weight decay never sees.
  """

  def __init__(self, d: int, hidden: int, proj: int, *, norm: str, dtype, rngs: nnx.Rngs):
    if norm not in ("batch", "layer"):
      raise ValueError(f"model.head_norm must be 'batch' or 'layer', got {norm!r}")
    self.batch_norm = norm == "batch"
    bias = not self.batch_norm
    self.fc1 = dense(d, hidden, ("embed", "proj"), dtype=dtype, rngs=rngs, use_bias=bias)
    self.fc2 = dense(hidden, proj, ("proj", "proj"), dtype=dtype, rngs=rngs, use_bias=bias)
    make = ((lambda n: MaskedBatchNorm(n, rngs=rngs)) if self.batch_norm else
            (lambda n: layer_norm(n, rngs=rngs, axis="proj")))
    self.norm1, self.norm2 = make(hidden), make(proj)

  def _norm(self, norm, x, valid):
    return norm(x, valid) if self.batch_norm else norm(x)

  def __call__(self, h_BxMxWxD, valid_BxMxW):
    x = jax.nn.relu(self._norm(self.norm1, self.fc1(h_BxMxWxD), valid_BxMxW))
    return self._norm(self.norm2, self.fc2(x), valid_BxMxW).astype(jnp.float32)


class SoftmaxGate(nnx.Module):
  """Learned softmax gate over modalities, for fine-tuning: a per-token score (Linear D->1) plus
  a per-modality bias, softmax over the modalities present at each epoch, weighted sum."""

  def __init__(self, names: tuple[str, ...], d: int, *, rngs: nnx.Rngs):
    self.names = tuple(names)
    self.score = dense(d, 1, ("embed", None), dtype=jnp.float32, rngs=rngs)
    self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("modality",))(
        rngs.params(), (len(self.names),), jnp.float32))

  def __call__(self, per_modality_BxMxWxD, present_BxMxW, names=None):
    idx = jnp.asarray([self.names.index(m) for m in (names or self.names)])
    logits_BxMxW = self.score(per_modality_BxMxWxD.astype(jnp.float32))[..., 0]
    logits_BxMxW = logits_BxMxW + self.bias.value[idx][None, :, None]
    logits_BxMxW = jnp.where(present_BxMxW, logits_BxMxW, -1e9)
    g_BxMxW = jax.nn.softmax(logits_BxMxW, axis=1) * present_BxMxW
    return (g_BxMxW[..., None] * per_modality_BxMxWxD.astype(jnp.float32)).sum(1)


class Sleep2Vec(nnx.Module):
  """`modalities` maps name -> (rate Hz, number of channels); `config` is `config.model`."""

  def __init__(self, modalities: dict[str, tuple[int, int]], config, *, rngs: nnx.Rngs):
    dtype = DTYPES[config.dtype]
    d = config.width
    dt = config.signal_tokenizer_width or d
    self.names = tuple(modalities)
    token_proj = config.token_proj
    if token_proj not in ("auto", "always"):
      raise ValueError(f"model.token_proj must be 'auto' or 'always', got {token_proj!r}")
    self.tokenizers = nnx.Dict({
        name: make_signal_tokenizer(config, rate, channels, dt, dtype=dtype, rngs=rngs)
        for name, (rate, channels) in modalities.items()})
    # large: tokenizers stay narrower, one shared projection up to the transformer width;
    # "always": the reference's embedding_projection, which the mask token precedes.
    self.mask_before_proj = token_proj == "always"
    self.token_proj = (dense(dt, d, ("features", "embed"), dtype=dtype, rngs=rngs)
                       if dt != d or self.mask_before_proj else None)
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("modality", "embed"))
    self.modality_embed = (nnx.Param(init(rngs.params(), (len(self.names), d)))
                           if config.modality_embed else None)
    self.mask_token = nnx.Param(init(rngs.params(),
                                     (len(self.names), dt if self.mask_before_proj else d)))
    residual = config.residual_dtype
    if residual not in ("float32", "compute"):
      raise ValueError(f"model.residual_dtype must be 'float32' or 'compute', got {residual!r}")
    # Dropout needs keys of its own, drawn only when some rate is on (the mask-token draw of a
    # model without dropout stays what it was).
    self.dropout_on = config.dropout > 0 or config.attention_dropout > 0
    self.encoder = Transformer(d, config.depth, config.heads, config.mlp, dtype=dtype, rngs=rngs,
                               norm=config.norm, remat=config.remat,
                               attention=config.attention,
                               residual_dtype=jnp.float32 if residual == "float32" else dtype,
                               norm_eps=config.norm_eps,
                               dropout=config.dropout,
                               attention_dropout=config.attention_dropout,
                               scan=config.scan_blocks)
    self.head = ProjectionHead(d, config.proj_hidden or d, config.proj_dim,
                               norm=config.head_norm, dtype=dtype, rngs=rngs)

  def present(self, names, masks) -> jax.Array:
    return jnp.stack([masks[m].any(-1) for m in names], 1)  # [B, M, W]

  def token(self, i: int, signals, masks, rng: jax.Array | None = None) -> jax.Array:
    """Modality i's tokens [B, W, Dt] at the tokenizer width, before masking, projection and
    embeddings; `rng`: the tokenizer's dropout (training)."""
    m = self.names[i]
    return self.tokenizers[m](signals[m], masks[m], rng)

  def encode(self, signals: dict, masks: dict, *, rng: jax.Array | None = None,
             mask_fraction: float = 0.0, select: jax.Array | None = None) -> dict:
    """signals[m]: [B, W, C, S]; masks[m]: [B, W, C] channel presence, for the modalities present
    as keys (in the model's order). `select` (int [K], traced) encodes only K modalities chosen
    at run time from those keys (one tokenizer runs per slot, under `lax.switch`).

    Returns names (static, or None with `select`), index [M] (modality ids), tokens [B, M, W, D]
    (the shared transformer's outputs) and present [B, M, W].

    `rng` marks training: it draws the mask tokens and, with `model.dropout` or
    `model.attention_dropout` on, the dropout masks (a pure function of `rng`: the same key gives
    the same masks, as GradCache's second forward needs). Without it the encoder is deterministic.
    """
    names = [m for m in self.names if m in signals]
    if not names:
      raise ValueError(f"batch holds none of the model's modalities {self.names}")
    unknown = set(signals) - set(self.names)
    if unknown:
      raise ValueError(f"batch modalities {sorted(unknown)} are not among the model's {self.names}")
    ids = [self.names.index(m) for m in names]
    mask_rng = tok_rng = enc_rng = None
    if rng is not None:
      mask_rng = rng
      if self.dropout_on:
        mask_rng, tok_rng, enc_rng = jax.random.split(rng, 3)
    tok_key = lambda i: None if tok_rng is None else jax.random.fold_in(tok_rng, i)
    if select is None:
      index = jnp.asarray(ids)
      x_BxMxWxD = jnp.stack([self.token(i, signals, masks, tok_key(i)) for i in ids], 1)
      present_BxMxW = self.present(names, masks)
    else:
      branches = [lambda i=i: (self.token(i, signals, masks, tok_key(i)),
                               masks[self.names[i]].any(-1)) for i in ids]
      pairs = [jax.lax.switch(s, branches) for s in select]
      x_BxMxWxD = jnp.stack([p[0] for p in pairs], 1)
      present_BxMxW = jnp.stack([p[1] for p in pairs], 1)
      index, names = jnp.asarray(ids)[select], None
    B, M, W, _ = x_BxMxWxD.shape
    replace_BxMxW = None
    if mask_rng is not None and mask_fraction > 0:
      replace_BxMxW = jax.random.bernoulli(mask_rng, mask_fraction, (B, M, W)) & present_BxMxW

    def mask(x_BxMxWxD):
      if replace_BxMxW is None:
        return x_BxMxWxD
      mask_BxMxWxD = self.mask_token.value[index][None, :, None].astype(x_BxMxWxD.dtype)
      return jnp.where(replace_BxMxW[..., None], mask_BxMxWxD, x_BxMxWxD)

    x_BxMxWxD = mask(x_BxMxWxD) if self.mask_before_proj else x_BxMxWxD
    if self.token_proj is not None:
      x_BxMxWxD = self.token_proj(x_BxMxWxD)
    x_BxMxWxD = x_BxMxWxD if self.mask_before_proj else mask(x_BxMxWxD)
    D = x_BxMxWxD.shape[-1]
    if self.modality_embed is not None:
      embed_BxMxWxD = self.modality_embed.value[index][None, :, None]
      x_BxMxWxD = x_BxMxWxD + embed_BxMxWxD.astype(x_BxMxWxD.dtype)
    x_BxMxWxD = jnp.where(present_BxMxW[..., None], x_BxMxWxD, 0)  # absent epochs carry nothing
    h = self.encoder(constrain(x_BxMxWxD.reshape(B * M, W, D), _TOKENS),
                     present_BxMxW.reshape(B * M, W), enc_rng)
    return {"names": names, "index": index, "tokens": h.reshape(B, M, W, D),
            "present": present_BxMxW}

  def project(self, tokens_BxMxWxD: jax.Array, present_BxMxW: jax.Array) -> jax.Array:
    """Per-token projections [B, M, W, P] (not normalised; the loss normalises)."""
    return self.head(tokens_BxMxWxD, present_BxMxW)

  @staticmethod
  def fuse(tokens_BxMxWxD: jax.Array, present_BxMxW: jax.Array) -> jax.Array:
    """Fused per-epoch embedding [B, W, D]: mean over present modalities (zero if none)."""
    weight_BxMxW = present_BxMxW.astype(jnp.float32)
    total_BxWxD = (tokens_BxMxWxD.astype(jnp.float32) * weight_BxMxW[..., None]).sum(1)
    return total_BxWxD / jnp.maximum(weight_BxMxW.sum(1), 1.0)[..., None]

  def __call__(self, signals: dict, masks: dict) -> dict:
    """Inference: tokens [B, M, W, D], present [B, M, W], unit projections z [B, M, W, P], fused
    per-epoch embedding [B, W, D]."""
    out = self.encode(signals, masks)
    z = self.project(out["tokens"], out["present"])
    z = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-6)
    return {**out, "z": z, "fused": self.fuse(out["tokens"], out["present"])}
