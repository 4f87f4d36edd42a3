"""Why the SleepLM decoder ignores its memory: memory statistics, gradient norms of the stage_event
caption loss and the memory gain on the test split of a checkpoint (BENCHMARKS.md, SleepLM
conditioning). `python benchmarks/sleeplm_memory.py <workdir> [step]`."""
import sys, json
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from sleepjax.config_tools import load_config
from sleepjax import generate
from sleepjax.evaluate import sleeplm, conditioning
from sleepjax.models.sleeplm.model import GROUPS
from sleepjax.objectives import sleeplm as obj

workdir = sys.argv[1]
config = load_config("configs/sleeplm.py:smoke")
config.eval.checkpoint_step = int(sys.argv[2]) if len(sys.argv) > 2 else 0
_, model, manifest, tok, step = generate.restore_model(config, workdir)
refs, segs = sleeplm.references(manifest, "test")
segments = [({m[4:]: v for m, v in a.items() if m.startswith("sig/")},
             {m[5:]: v for m, v in a.items() if m.startswith("mask/")}, a["stage"],
             [refs[(rid, first + i)][0]["stage_event"] for i in range(len(a["stage"]))])
            for rid, first, a in sleeplm._segments(manifest, "test", keep=lambda r, f: True)]
out = {"step": step}
mem = jnp.concatenate([conditioning.memories(model, s, m) for s, m, _, _ in segments])
stage = np.concatenate([st for _, _, st, _ in segments])
texts = sum([r for *_, r in segments], [])
keep = stage >= 0
mem, stage, texts = mem[keep], stage[keep], [t for t, k in zip(texts, keep) if k]
m = np.asarray(mem)
mean = m.mean(0)
out["memory_norm"] = float(np.linalg.norm(m, axis=-1).mean())
out["across_epoch_std_over_norm"] = float(np.linalg.norm(m - mean, axis=-1).mean() / np.linalg.norm(mean, axis=-1).mean())
out["across_token_std_over_norm"] = float(np.linalg.norm(m - m.mean(1, keepdims=True), axis=-1).mean() / out["memory_norm"])
# after each cross block's LayerNorm (what the decoder's keys/values see)
for i, b in enumerate(model.decoder.cross_blocks):
  ln = np.asarray(b.ln_kv(mem))
  out[f"ln_kv{i}_across_epoch_std_over_norm"] = float(np.linalg.norm(ln - ln.mean(0), axis=-1).mean() / np.linalg.norm(ln.mean(0), axis=-1).mean())
# linear probe of stage from mean memory (is the info there?)
from sleepjax.evaluate import probes, metrics
x = m.mean(1); n = len(x) // 2
rng = np.random.default_rng(0); perm = rng.permutation(len(x))
tr, te = perm[:n], perm[n:]
mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
z = (x - mu) / sd
cents = np.stack([z[tr][stage[tr] == k].mean(0) if (stage[tr] == k).any() else np.full(z.shape[1], np.inf) for k in range(5)])
pred = np.argmin(((z[te][:, None] - cents[None]) ** 2).sum(-1), 1)
out["memory_stage_ncm_acc"] = float((pred == stage[te]).mean())
out["majority"] = float(np.bincount(stage).max() / len(stage))
# gradient norms of the stage_event caption loss
ids, valid = tok.encode(texts, 64)
group = jnp.full((len(texts),), GROUPS.index("stage_event"))
graphdef, params = nnx.split(model, nnx.Param)
def loss(p, mem):
  mdl = nnx.merge(graphdef, p)
  logits = mdl.caption_logits(ids, valid, group, mem)
  return obj.caption_loss(logits, jnp.asarray(ids), jnp.asarray(valid))[0]
g, gm = jax.grad(loss, argnums=(0, 1))(params, mem)
flat = jax.tree_util.tree_flatten_with_path(g)[0]
def norm(pred):
  return float(np.sqrt(sum(float(jnp.sum(v ** 2)) for path, v in flat if pred(jax.tree_util.keystr(path)))))
out["grad_cross_attn"] = norm(lambda k: "cross_blocks" in k and "attn" in k)
out["grad_self_attn"] = norm(lambda k: "self_blocks" in k and "attn" in k)
out["grad_decoder_all"] = norm(lambda k: "decoder" in k)
out["grad_text_tower"] = norm(lambda k: "'text'" in k)
out["grad_memory"] = float(jnp.linalg.norm(gm))
out.update(conditioning.memory_gain(model, tok, mem, stage, texts))
print(json.dumps(out, indent=1))
