"""SleepLM text side: the causal text tower (CLS appended last -> contrastive projection) and the
caption decoder (causal self-attention over [group prefix, text states] + cross-attention to the
signal's pooled tokens -> vocabulary).

As in CoCa, the decoder's input is the text tower's token states (the unimodal half of the text
decoder). Both run in two modes: whole sequences (training), and chunks at a position with
per-layer key/value caches (generation; `init_cache` / `step`), which compute the same thing.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from sleepjax.models.layers import dense, layer_norm
from sleepjax.models.sleeplm.layers import ResidualBlock


def causal_mask(q_pos, k_pos, prefix: int = 0):
  """[Tq, Tk] True = may attend: keys inside the prefix, or not later than the query.

  With prefix P the prefix attends to itself bidirectionally and never to text; text attends to
  the whole prefix and causally to text (prefix-causal)."""
  return (k_pos[None, :] < prefix) | (k_pos[None, :] <= q_pos[:, None])


def _empty_cache(blocks, n: int, length: int, dtype):
  return [(jnp.zeros((n, length, b.attn.heads, b.attn.head_dim), dtype),) * 2 for b in blocks]


class TextTower(nnx.Module):
  def __init__(self, vocab: int, c, embed_dim: int, *, dtype, rngs: nnx.Rngs):
    d = c.width
    self.token_embed = nnx.Embed(
        vocab, d, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
    init = nnx.with_partitioning(nnx.initializers.normal(0.01), (None, "embed"))
    self.pos_embed = nnx.Param(init(rngs.params(), (c.context + 1, d)))
    self.cls = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.01), ("embed",))(
        rngs.params(), (d,)))
    self.blocks = nnx.List([ResidualBlock(d, c.heads, int(d * c.mlp_ratio), dtype=dtype, rngs=rngs)
                            for _ in range(c.depth)])
    self.ln_final = layer_norm(d, rngs=rngs)
    self.proj = dense(d, embed_dim, ("embed", "proj"), dtype=dtype, rngs=rngs, use_bias=False)
    self.context, self.dtype = c.context, dtype

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
    for block in self.blocks:
      x = block(x, mask)
    latent = self.proj(self.ln_final(x[:, -1]).astype(self.dtype)).astype(jnp.float32)
    return {"latent": latent, "states": x[:, :-1]}

  def init_cache(self, n: int, length: int):
    return _empty_cache(self.blocks, n, length, self.dtype)

  def step(self, tokens_NxT: jax.Array, index, cache):
    """Token states of a chunk starting at position `index`, reading and writing `cache`."""
    T = tokens_NxT.shape[1]
    pos = index + jnp.arange(T)
    x = self.token_embed(tokens_NxT) + jnp.take(self.pos_embed[...], pos, 0).astype(self.dtype)
    mask = causal_mask(pos, jnp.arange(cache[0][0].shape[1]))[None]
    new = []
    for block, c in zip(self.blocks, cache):
      x, c = block(x, mask, cache=c, cache_index=index)
      new.append(c)
    return x, new


class CaptionDecoder(nnx.Module):
  def __init__(self, vocab: int, c, n_groups: int, *, dtype, rngs: nnx.Rngs):
    d, mlp = c.width, int(c.width * c.mlp_ratio)
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))
    self.prefix = nnx.Param(init(rngs.params(), (n_groups, c.prefix_len, d)))
    self.self_blocks = nnx.List([ResidualBlock(d, c.heads, mlp, dtype=dtype, rngs=rngs)
                                 for _ in range(c.depth)])
    self.cross_blocks = nnx.List([ResidualBlock(d, c.heads, mlp, dtype=dtype, rngs=rngs, cross=True)
                                  for _ in range(c.depth)])
    self.ln_final = layer_norm(d, rngs=rngs)
    self.out = dense(d, vocab, ("embed", "vocab"), dtype=dtype, rngs=rngs, use_bias=False)
    self.prefix_len, self.dtype = c.prefix_len, dtype

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
    for s, c in zip(self.self_blocks, self.cross_blocks):
      x = c(s(x, mask), kv=memory_NxMxD)
    return x[:, P:]

  def cross_kv(self, memory_NxMxD):
    return [c.cross_kv(memory_NxMxD) for c in self.cross_blocks]

  def init_cache(self, n: int, length: int):
    return _empty_cache(self.self_blocks, n, self.prefix_len + length, self.dtype)

  def _run(self, x, index, cache, cross_kv):
    pos = index + jnp.arange(x.shape[1])
    mask = causal_mask(pos, jnp.arange(cache[0][0].shape[1]), self.prefix_len)[None]
    new = []
    for s, c, ckv, kv in zip(self.self_blocks, self.cross_blocks, cache, cross_kv):
      x, ckv = s(x, mask, cache=ckv, cache_index=index)
      x = c(x, kv=kv)
      new.append(ckv)
    return x, new

  def prefill(self, group_N, cache, cross_kv):
    """Runs the group prefix into the cache (positions 0 .. P-1)."""
    prefix = jnp.take(self.prefix[...], group_N, 0).astype(self.dtype)
    return self._run(prefix, 0, cache, cross_kv)[1]

  def step(self, states_NxTxD, text_index, cache, cross_kv):
    """Logits [N, T, V] for a chunk of text states starting at text position `text_index`."""
    x, cache = self._run(states_NxTxD.astype(self.dtype), self.prefix_len + text_index, cache,
                         cross_kv)
    return self.logits(x), cache
