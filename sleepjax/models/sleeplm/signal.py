"""SleepLM signal encoder: per-channel patching, dual (channel, temporal) attention blocks,
attentional poolers; and the reconstruction decoder that maps the pooled tokens back to signals.

Tokens are [N, C, T, D]: N epochs, C channels, T = 1920 / 16 = 120 patches. Absent channels are
keys nobody attends to in channel attention and take no part in pooling. The dual blocks and the
reconstruction decoder's blocks are `layers.stack`s (looped, or under `nnx.scan` with
`model.scan_blocks`; each block rematerialised under `model.remat`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import (RMSNorm, SwiGLU, dense, rematted, rope_angles, run_stack,
                                    stack)
from sleepjax.models.sleeplm.layers import (AttentionalPooler, LearnedRope, MultiHeadAttention,
                                            ResidualBlock)
from sleepjax.sharding import constrain


# What the caption decoder attends to. The pooled tokens alone are one vector 32 times over at the
# smoke size whose epoch-specific part is ~14 % of its norm (BENCHMARKS.md, SleepLM conditioning);
# a channel's mean token or the patch tokens themselves vary 2-7x more from epoch to epoch.
MEMORY = ("pooled", "pooled+channels", "pooled+tokens")


class DualBlock(nnx.Module):
  """Channel attention (learnable-frequency RoPE over channel index) + SwiGLU, then temporal
  attention (RoPE theta 1e4 over patches) + SwiGLU; post-norm RMSNorm after each residual."""

  def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs,
               attention: str = "xla"):
    attn = lambda: MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs, qkv_bias=False,
                                      attention=attention)
    self.channel_attn = attn()
    self.channel_norm = RMSNorm(d)
    self.channel_mlp = SwiGLU(d, mlp, dtype=dtype, rngs=rngs)
    self.channel_mlp_norm = RMSNorm(d)
    self.temporal_attn = attn()
    self.temporal_norm = RMSNorm(d)
    self.temporal_mlp = SwiGLU(d, mlp, dtype=dtype, rngs=rngs)
    self.temporal_mlp_norm = RMSNorm(d)

  def __call__(self, x_NxCxTxD, present_NxC, channel_angle, time_angle):
    N, C, T, D = x_NxCxTxD.shape
    x = x_NxCxTxD.transpose(0, 2, 1, 3).reshape(N * T, C, D)
    mask = jnp.broadcast_to(present_NxC[:, None, None, :], (N, T, 1, C)).reshape(N * T, 1, C)
    x = self.channel_norm(x + self.channel_attn(x, mask=mask, angle=channel_angle))
    x = self.channel_mlp_norm(x + self.channel_mlp(x))
    x = x.reshape(N, T, C, D).transpose(0, 2, 1, 3).reshape(N * C, T, D)
    x = constrain(x, ("activation_batch", "activation_time", "activation_embed"))
    x = self.temporal_norm(x + self.temporal_attn(x, angle=time_angle))
    x = self.temporal_mlp_norm(x + self.temporal_mlp(x))
    return x.reshape(N, C, T, D)


def _dual_block(block, x_NxCxTxD, present_NxC, channel_angle, time_angle):
  return block(x_NxCxTxD, present_NxC, channel_angle, time_angle)


def _block(block, x):
  return block(x)


class SignalEncoder(nnx.Module):
  def __init__(self, n_channels: int, c, embed_dim: int, *, dtype, rngs: nnx.Rngs,
               attention: str = "xla", scan: bool = False, remat: str = "none"):
    d, heads = c.width, c.heads
    self.patch = c.patch
    self.patch_embed = dense(c.patch, c.conv_dim, ("patch", "features"), dtype=dtype, rngs=rngs)
    self.embed = dense(c.conv_dim, d, ("features", "embed"), dtype=dtype, rngs=rngs)
    init = nnx.with_partitioning(nnx.initializers.normal(1.0), ("channels", "embed"))
    self.channel_embed = nnx.Param(init(rngs.params(), (n_channels, d)))
    self.channel_rope = LearnedRope(d // heads, rngs=rngs)  # shared by all blocks
    self.blocks = stack(lambda rngs: DualBlock(d, heads, int(d * c.mlp_ratio), dtype=dtype,
                                               rngs=rngs, attention=attention),
                        c.depth, rngs, scan)
    self.norm = RMSNorm(d)
    self.contrastive_pool = AttentionalPooler(d, heads, 1, dtype=dtype, rngs=rngs,
                                              attention=attention)
    self.decoder_pool = AttentionalPooler(d, heads, c.decoder_tokens, dtype=dtype, rngs=rngs,
                                          attention=attention)
    self.global_attn = MultiHeadAttention(d, heads, dtype=dtype, rngs=rngs, attention=attention)
    self.proj = dense(d, embed_dim, ("embed", "proj"), dtype=dtype, rngs=rngs)
    if c.decoder_memory not in MEMORY:
      raise ValueError(f"model.signal.decoder_memory={c.decoder_memory!r} ({', '.join(MEMORY)})")
    self.dtype, self.heads, self.memory_kind = dtype, heads, c.decoder_memory
    self.scan, self.remat = scan, remat

  def __call__(self, x_NxCxS: jax.Array, present_NxC: jax.Array) -> dict:
    """-> latent [N, P] (unnormalised contrastive embedding), pooled [N, D] (global token),
    memory [N, M, D] (what the caption decoder attends to: `MEMORY`), recon [N, decoder_tokens, D]
    (the pooled tokens, the reconstruction decoder's input)."""
    N, C, S = x_NxCxS.shape
    T = S // self.patch
    patches = x_NxCxS.astype(self.dtype).reshape(N, C, T, self.patch)
    x = self.embed(self.patch_embed(patches))
    x = x + self.channel_embed[...][None, :, None].astype(x.dtype)
    head_dim = x.shape[-1] // self.heads
    channel_angle = self.channel_rope(jnp.arange(C))
    time_angle = rope_angles(jnp.arange(T), head_dim)
    call = rematted(_dual_block, self.remat)
    body = lambda x, block: (call(block, x, present_NxC, channel_angle, time_angle), None)
    x, _ = run_stack(body, x, (self.blocks,), scan=self.scan)
    x = self.norm(x).reshape(N, C * T, -1)
    valid = jnp.repeat(present_NxC, T, axis=1)
    memory = self.decoder_pool(x, valid)  # [N, M, D]
    token = self.contrastive_pool(x, valid)  # [N, 1, D]
    pooled = self.global_attn(token, memory)[:, 0]  # the global token attends to the memory
    decoder_memory = memory
    if self.memory_kind == "pooled+channels":  # absent channels: zero tokens (no signal in them)
      chan = jnp.where(present_NxC[..., None], x.reshape(N, C, T, -1).mean(2), 0)
      decoder_memory = jnp.concatenate([memory, chan.astype(memory.dtype)], 1)
    elif self.memory_kind == "pooled+tokens":  # an absent channel's tokens are input-independent
      decoder_memory = jnp.concatenate([memory, x.astype(memory.dtype)], 1)
    return {"latent": self.proj(pooled).astype(jnp.float32), "pooled": pooled,
            "memory": decoder_memory, "recon": memory}


class ReconDecoder(nnx.Module):
  """Two pre-LN layers (ReLU MLP x2) over the pooled tokens -> mean -> MLP -> [C, S]."""

  def __init__(self, d: int, heads: int, depth: int, n_channels: int, samples: int, *, dtype,
               rngs: nnx.Rngs, attention: str = "xla", scan: bool = False, remat: str = "none"):
    self.blocks = stack(lambda rngs: ResidualBlock(d, heads, 2 * d, dtype=dtype, rngs=rngs,
                                                   act=jax.nn.relu, attention=attention),
                        depth, rngs, scan)
    self.hidden = dense(d, d // 2, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.out = dense(d // 2, n_channels * samples, ("mlp", "recon"), dtype=dtype, rngs=rngs)
    self.shape = (n_channels, samples)
    self.scan, self.remat = scan, remat

  def __call__(self, memory_NxMxD: jax.Array) -> jax.Array:
    call = rematted(_block, self.remat)
    x, _ = run_stack(lambda x, block: (call(block, x), None), memory_NxMxD, (self.blocks,),
                     scan=self.scan)
    h = jax.nn.relu(self.hidden(x.mean(1)))
    return self.out(h).astype(jnp.float32).reshape(-1, *self.shape)
