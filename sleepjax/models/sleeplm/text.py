"""SleepLM text side: the causal text tower (CLS appended last -> contrastive projection) and the
caption decoder (causal self-attention over [group prefix, text states] + cross-attention to the
signal's pooled tokens -> vocabulary).

As in CoCa, the decoder's input is the text tower's token states (the unimodal half of the text
decoder). Both run in two modes: whole sequences (training), and chunks at a position with
per-layer key/value caches (generation; `init_cache` / `step`), which compute the same thing.
Their blocks are `layers.stack`s: looped, or under `nnx.scan` (`model.scan_blocks`), where a
cache's leaves carry the layers on a leading axis ([layers, N, length, H, K]) instead of being a
list over layers; `model.remat` rematerialises each layer of a whole-sequence pass.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import dense, layer_norm, rematted, run_stack, stack
from sleepjax.models.sleeplm.layers import ResidualBlock


def causal_mask(q_pos, k_pos, prefix: int = 0):
  """[Tq, Tk] True = may attend: keys inside the prefix, or not later than the query.

  With prefix P the prefix attends to itself bidirectionally and never to text; text attends to
  the whole prefix and causally to text (prefix-causal)."""
  return (k_pos[None, :] < prefix) | (k_pos[None, :] <= q_pos[:, None])


def _empty_cache(blocks, depth: int, n: int, length: int, dtype, scan: bool):
  """Keys and values [N, length, H, K] per layer: a list, or stacked on a leading layers axis."""
  if scan:
    return (jnp.zeros((depth, n, length, blocks.attn.heads, blocks.attn.head_dim), dtype),) * 2
  return [(jnp.zeros((n, length, b.attn.heads, b.attn.head_dim), dtype),) * 2 for b in blocks]


def _cache_length(cache) -> int:
  """The key/value slots of a cache (either layout)."""
  return jax.tree.leaves(cache)[0].shape[-3]


def _self_block(block, x, mask):
  return block(x, mask)


def _decoder_layer(self_block, cross_block, x, mask, memory):
  return cross_block(self_block(x, mask), kv=memory)


class TextTower(nnx.Module):
  def __init__(self, vocab: int, c, embed_dim: int, *, dtype, rngs: nnx.Rngs,
               attention: str = "xla", scan: bool = False, remat: str = "none"):
    d = c.width
    self.token_embed = nnx.Embed(
        vocab, d, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
    init = nnx.with_partitioning(nnx.initializers.normal(0.01), (None, "embed"))
    self.pos_embed = nnx.Param(init(rngs.params(), (c.context + 1, d)))
    self.cls = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.01), ("embed",))(
        rngs.params(), (d,)))
    self.blocks = stack(lambda rngs: ResidualBlock(d, c.heads, int(d * c.mlp_ratio), dtype=dtype,
                                                   rngs=rngs, attention=attention),
                        c.depth, rngs, scan)
    self.ln_final = layer_norm(d, rngs=rngs)
    self.proj = dense(d, embed_dim, ("embed", "proj"), dtype=dtype, rngs=rngs, use_bias=False)
    self.context, self.dtype = c.context, dtype
    self.depth, self.scan, self.remat = c.depth, scan, remat

  def __call__(self, tokens_NxL: jax.Array, valid_NxL: jax.Array) -> dict:
    """-> latent [N, P] (from the CLS token), states [N, L, D] (token states for the decoder)."""
    N, L = tokens_NxL.shape
    if L > self.context:
      raise ValueError(f"captions of {L} tokens exceed the text context {self.context}")
    x = self.token_embed(tokens_NxL) + self.pos_embed[:L].astype(self.dtype)
    cls = (self.cls[...] + self.pos_embed[L]).astype(self.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(cls, (N, 1, x.shape[-1]))], 1)
    pos = jnp.arange(L + 1)
    # Text rows are causal (pads come after the text); the CLS row sees the real tokens and itself.
    key_ok_Nx1xT = jnp.concatenate([valid_NxL, jnp.ones((N, 1), bool)], 1)[:, None, :]
    mask = causal_mask(pos, pos)[None] & ((pos < L)[None, :, None] | key_ok_Nx1xT)
    call = rematted(_self_block, self.remat)
    x, _ = run_stack(lambda x, block: (call(block, x, mask), None), x, (self.blocks,),
                     scan=self.scan)
    latent = self.proj(self.ln_final(x[:, -1]).astype(self.dtype)).astype(jnp.float32)
    return {"latent": latent, "states": x[:, :-1]}

  def init_cache(self, n: int, length: int):
    return _empty_cache(self.blocks, self.depth, n, length, self.dtype, self.scan)

  def step(self, tokens_NxT: jax.Array, index, cache):
    """Token states of a chunk starting at position `index`, reading and writing `cache`."""
    T = tokens_NxT.shape[1]
    pos = index + jnp.arange(T)
    x = self.token_embed(tokens_NxT) + jnp.take(self.pos_embed[...], pos, 0).astype(self.dtype)
    mask = causal_mask(pos, jnp.arange(_cache_length(cache)))[None]
    return run_stack(lambda x, block, c: block(x, mask, cache=c, cache_index=index), x,
                     (self.blocks,), (cache,), scan=self.scan)


class CaptionDecoder(nnx.Module):
  """Layer i: self-attention block `self_blocks[i]`, then cross-attention block `cross_blocks[i]`
  (two stacks of one depth, run side by side)."""

  def __init__(self, vocab: int, c, n_groups: int, *, dtype, rngs: nnx.Rngs,
               attention: str = "xla", scan: bool = False, remat: str = "none"):
    d, mlp = c.width, int(c.width * c.mlp_ratio)
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))
    self.prefix = nnx.Param(init(rngs.params(), (n_groups, c.prefix_len, d)))
    block = lambda cross: lambda rngs: ResidualBlock(d, c.heads, mlp, dtype=dtype, rngs=rngs,
                                                     cross=cross, attention=attention)
    self.self_blocks = stack(block(False), c.depth, rngs, scan)
    self.cross_blocks = stack(block(True), c.depth, rngs, scan)
    self.ln_final = layer_norm(d, rngs=rngs)
    self.out = dense(d, vocab, ("embed", "vocab"), dtype=dtype, rngs=rngs, use_bias=False)
    self.prefix_len, self.dtype = c.prefix_len, dtype
    self.depth, self.scan, self.remat = c.depth, scan, remat

  def logits(self, x):
    return self.out(self.features(x)).astype(jnp.float32)

  def features(self, x):
    """The vocabulary projection's input: logits = features @ self.out.kernel."""
    return self.ln_final(x).astype(self.dtype)

  def __call__(self, states_NxLxD, group_N, memory_NxMxD) -> jax.Array:
    """Logits [N, L, V]: position i predicts token i + 1."""
    return self.logits(self.hidden(states_NxLxD, group_N, memory_NxMxD))

  def hidden(self, states_NxLxD, group_N, memory_NxMxD) -> jax.Array:
    """The text positions' last hidden states [N, L, D] (before `features`)."""
    P = self.prefix_len
    L = states_NxLxD.shape[1]
    prefix = jnp.take(self.prefix[...], group_N, 0).astype(self.dtype)
    x = jnp.concatenate([prefix, states_NxLxD.astype(self.dtype)], 1)
    pos = jnp.arange(P + L)
    mask = causal_mask(pos, pos, P)[None]
    call = rematted(_decoder_layer, self.remat)
    x, _ = run_stack(lambda x, s, c: (call(s, c, x, mask, memory_NxMxD), None), x,
                     (self.self_blocks, self.cross_blocks), scan=self.scan)
    return x[:, P:]

  def cross_kv(self, memory_NxMxD):
    """Each layer's cross-attention keys and values of the memory (a cache's layout)."""
    return run_stack(lambda _, c: (None, c.cross_kv(memory_NxMxD)), None, (self.cross_blocks,),
                     scan=self.scan)[1]

  def init_cache(self, n: int, length: int):
    return _empty_cache(self.self_blocks, self.depth, n, self.prefix_len + length, self.dtype,
                        self.scan)

  def _run(self, x, index, cache, cross_kv):
    pos = index + jnp.arange(x.shape[1])
    mask = causal_mask(pos, jnp.arange(_cache_length(cache)), self.prefix_len)[None]

    def layer(x, s, c, self_kv, kv):
      x, self_kv = s(x, mask, cache=self_kv, cache_index=index)
      return c(x, kv=kv), self_kv

    return run_stack(layer, x, (self.self_blocks, self.cross_blocks), (cache, cross_kv),
                     scan=self.scan)

  def prefill(self, group_N, cache, cross_kv):
    """Runs the group prefix into the cache (positions 0 .. P-1)."""
    prefix = jnp.take(self.prefix[...], group_N, 0).astype(self.dtype)
    return self._run(prefix, 0, cache, cross_kv)[1]

  def step(self, states_NxTxD, text_index, cache, cross_kv):
    """Logits [N, T, V] for a chunk of text states starting at text position `text_index`."""
    x, cache = self._run(states_NxTxD.astype(self.dtype), self.prefix_len + text_index, cache,
                         cross_kv)
    return self.logits(x), cache
