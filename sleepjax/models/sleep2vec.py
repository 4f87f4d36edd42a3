"""sleep2vec: per-modality tokenizers, one shared transformer, a projection head for InfoNCE."""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import Transformer, dense
from sleepjax.models.tokenizer import ModalityTokenizer
from sleepjax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Sleep2Vec(nnx.Module):
  """Encodes each modality's window of epochs; fusion `per_modality` shares one encoder.

  `modalities` maps name -> (rate Hz, number of channels).
  """

  def __init__(self, modalities: dict[str, tuple[int, int]], config, *, rngs: nnx.Rngs):
    dtype = DTYPES[config.dtype]
    d = config.width
    self.names = tuple(modalities)
    self.tokenizers = nnx.Dict({
        name: ModalityTokenizer(rate, channels, config.stem_features, d, config.patch_seconds,
                                dtype=dtype, rngs=rngs)
        for name, (rate, channels) in modalities.items()})
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("modality", "embed"))
    self.modality_embed = nnx.Param(init(rngs.params(), (len(self.names), d)))
    self.encoder = Transformer(d, config.depth, config.heads, config.mlp, dtype=dtype, rngs=rngs)
    self.head = dense(d, config.proj_dim, ("embed", "proj"), dtype=dtype, rngs=rngs)

  def __call__(self, signals: dict[str, jax.Array], masks: dict[str, jax.Array]) -> dict:
    """signals[m]: [B, W, C, S]; masks[m]: [B, W, C] channel presence.

    Returns per-modality tokens [B, M, W, D], presence [B, M, W], unit projections z [B, M, W, P]
    and the fused per-epoch embedding [B, W, D] (mean over present modalities).
    """
    tokens = [self.tokenizers[m](signals[m], masks[m]) for m in self.names]
    x_BxMxWxD = jnp.stack(tokens, 1) + self.modality_embed[None, :, None].astype(tokens[0].dtype)
    present_BxMxW = jnp.stack([masks[m].any(-1) for m in self.names], 1)
    B, M, W, D = x_BxMxWxD.shape
    h = self.encoder(constrain(x_BxMxWxD.reshape(B * M, W, D), ("activation_batch", "activation_time", "activation_embed")))
    h_BxMxWxD = h.reshape(B, M, W, D)
    z_BxMxWxP = self.head(h_BxMxWxD).astype(jnp.float32)
    z_BxMxWxP = z_BxMxWxP / (jnp.linalg.norm(z_BxMxWxP, axis=-1, keepdims=True) + 1e-6)
    weight_BxMxW = present_BxMxW.astype(jnp.float32)
    fused_BxWxD = (h_BxMxWxD.astype(jnp.float32) * weight_BxMxW[..., None]).sum(1) / jnp.maximum(
        weight_BxMxW.sum(1), 1.0)[..., None]
    return {"tokens": h_BxMxWxD, "present": present_BxMxW, "z": z_BxMxWxP, "fused": fused_BxWxD}
