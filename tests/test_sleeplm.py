"""SleepLM (ReCoCa): parameter parity, masks, absent channels, losses vs NumPy, KV-cache decoding."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from data_prep.features import FEATURE_NAMES
from sleepjax.config_tools import load_config
from sleepjax.families import sleeplm as family
from sleepjax.models.sleeplm import inputs
from sleepjax.models.sleeplm.text import causal_mask
from sleepjax.objectives import sleeplm as objectives
from sleepjax.train import state as state_lib
from tests.conftest import REPO

MODALITIES = {"eeg": (128, 2), "eog": (128, 2), "emg": (128, 1), "ecg": (128, 1),
              "airflow": (32, 1), "resp_effort": (32, 2)}


def config(size="tiny"):
  return load_config(f"{REPO / 'configs' / 'sleeplm.py'}:{size}")


def deep_config():
  """tiny with two text and decoder layers and two prefix tokens per caption group: what only
  shows past the first layer or the first prefix token (the prefix seeing text, cache slots off by
  the prefix length) is visible."""
  c = config()
  c.model.text.depth = c.model.decoder.depth = 2
  c.model.decoder.prefix_len = 2
  return c


def make_batch(c, B=2, W=2, seed=0):
  rng = np.random.default_rng(seed)
  L, G = c.data.caption_len, 5
  batch = {"signals": {}, "masks": {}}
  for m, (rate, ch) in MODALITIES.items():
    batch["signals"][m] = rng.normal(size=(B, W, ch, rate * 30)).astype(np.float32)
    batch["masks"][m] = np.ones((B, W, ch), bool)
  caps = rng.integers(4, 60, size=(B, W, G, L)).astype(np.int32)
  lengths = rng.integers(5, L, size=(B, W, G))
  pos = np.arange(L)
  caps[..., 0] = 2
  caps = np.where(pos == lengths[..., None], 3, caps)
  caps = np.where(pos > lengths[..., None], 0, caps)
  batch["captions"], batch["caption_mask"] = caps, caps != 0
  # features of no real epoch: no two epochs' captions say the same thing
  batch["features"] = rng.normal(size=(B, W, len(FEATURE_NAMES))).astype(np.float32) * 100
  return batch


loss_fn = nnx.jit(family.loss)
embed_fn = nnx.jit(family.embed)
caption_logits = nnx.jit(lambda m, tok, valid, group, memory: m.caption_logits(tok, valid, group,
                                                                             memory))
memory_fn = nnx.jit(lambda m, b: m.encode_signal(*family.flat_inputs(m, b))["memory"])


def build(c, seed=0):
  return state_lib.build_model(c, MODALITIES, seed)  # family.build, as training builds it


# ------------------------------------------------------------------------------- parameter count
def expected_counts(c) -> dict:
  """SleepLM parameter counts from the architecture (the released model's layer shapes)."""
  m, V = c.model, c.text.vocab_size
  s, t, dec = m.signal, m.text, m.decoder
  K, S, P = len(m.channels), m.rate * 30, m.embed_dim
  d = s.width
  mha = 4 * d * d + 4 * d  # q, k, v, out with biases
  enc_attn = 4 * d * d + d  # q, k, v without bias, out with bias
  swiglu = 3 * d * int(d * s.mlp_ratio)
  signal = (s.patch * s.conv_dim + s.conv_dim) + (s.conv_dim * d + d) + K * d + (d // s.heads) // 2
  signal += s.depth * 2 * (enc_attn + swiglu + 2 * d) + d  # dual blocks, final RMSNorm
  signal += (d + mha) + (s.decoder_tokens * d + mha) + mha + (d * P + P)  # poolers, global, proj
  block = lambda w, h: 4 * w + mha_w(w) + (w * h + h) + (h * w + w)  # two LayerNorms, attn, MLP
  mha_w = lambda w: 4 * w * w + 4 * w
  tw, dw = t.width, dec.width
  text = V * tw + (t.context + 1) * tw + tw + t.depth * block(tw, 4 * tw) + 2 * tw + tw * P
  decoder = (5 * dec.prefix_len * dw + dec.depth * (2 * block(dw, 4 * dw) + 2 * dw)
             + 2 * dw + dw * V)
  recon = m.recon_depth * block(d, 2 * d) + (d * (d // 2) + d // 2) + (d // 2 * K * S + K * S)
  return {"signal": signal, "text": text, "decoder": decoder, "recon": recon,
          "total": signal + text + decoder + 1}


def count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_parameter_count_matches_architecture(size):
  c = config(size)
  model = nnx.eval_shape(lambda: build(c))
  want = expected_counts(c)
  got = {"signal": count(model.signal), "text": count(model.text), "decoder": count(model.decoder),
         "recon": count(model.recon)}
  got["total"] = count(model) - got["recon"]
  assert got == want
  if size == "base":  # SleepLM-Base as released: 385.4 M (+ 17.1 M reconstruction decoder)
    assert c.text.vocab_size == 49_408
    for key, ref in {"total": 385.4e6, "text": 123.6e6, "decoder": 208.1e6, "signal": 53.7e6,
                     "recon": 17.1e6}.items():
      assert abs(got[key] - ref) / ref < 0.01, (key, got[key])


def stacked(tree):
  """A looped model's pure state with each list of blocks ({0: ..., 1: ...}) stacked on a leading
  layers axis: the scanned model's layout."""
  if isinstance(tree, dict) and tree and all(isinstance(k, int) for k in tree):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[stacked(tree[i]) for i in sorted(tree)])
  if isinstance(tree, dict):
    return {k: stacked(v) for k, v in tree.items()}
  return tree


def scanned_copy(c, loop):
  """`loop` (built from `c`) as a model with model.scan_blocks: the same parameters, stacked."""
  c = c.copy_and_resolve_references()
  c.model.scan_blocks = True
  scan = build(c)
  state = nnx.state(scan)
  nnx.replace_by_pure_dict(state, stacked(nnx.to_pure_dict(nnx.state(loop))))
  nnx.update(scan, state)
  return scan


def _loop_and_scan(remat: str = "none"):
  c = deep_config()
  c.model.signal.depth, c.model.remat = 2, remat
  loop = build(c)
  return c, loop, scanned_copy(c, loop)


def test_scanned_towers_match_the_loop():
  """model.scan_blocks: every tower's blocks (signal dual blocks, text, caption decoder layers,
  reconstruction decoder) with the loop's parameters stacked on a `layers` axis give the loop's
  loss and metrics under nnx.scan; the looped tree is the one checkpoints hold, the stacked one
  keeps its logical axes. (Gradients, remat inside: the slow test below.)"""
  c, loop, scan = _loop_and_scan()
  paths = {p for p, _ in nnx.to_flat_state(nnx.state(loop, nnx.Param))}
  assert {("decoder", "self_blocks", 1, "attn", "q", "kernel"),
          ("signal", "blocks", 1, "temporal_attn", "q", "kernel"),
          ("text", "blocks", 1, "ln_1", "scale"),
          ("recon", "blocks", 1, "mlp", "up", "bias")} <= paths
  q = nnx.state(scan.decoder.cross_blocks, nnx.Param)["attn"]["q"]["kernel"]
  assert q.shape == (2, 32, 32) and q.out_sharding == ("layers", "embed", "heads")
  batch = make_batch(c)
  (loss_l, metrics_l), (loss_s, metrics_s) = [loss_fn(m, batch, jax.random.key(1))
                                              for m in (loop, scan)]
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6),
               metrics_l, metrics_s)


@pytest.mark.slow  # 85-343 s on the shared 2-core machine under load (two backward compiles)
def test_scanned_towers_match_the_loop_gradients_under_remat():
  """The scanned towers' gradients, each block rematerialised inside the scan, are the loop's."""
  c, loop, scan = _loop_and_scan("full")
  batch = make_batch(c)
  grad_fn = nnx.jit(nnx.value_and_grad(lambda m: family.loss(m, batch, jax.random.key(1)),
                                       has_aux=True))
  (loss_l, _), grad_l = grad_fn(loop)
  (loss_s, _), grad_s = grad_fn(scan)
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6),
               stacked(nnx.to_pure_dict(grad_l)), nnx.to_pure_dict(grad_s))


def test_groups_match_captions():
  from data_prep.captions import GROUPS  # pylint: disable=g-import-not-at-top
  from sleepjax.models.sleeplm.model import GROUPS as MODEL_GROUPS  # pylint: disable=g-import-not-at-top
  assert MODEL_GROUPS == GROUPS


# ------------------------------------------------------------------------------------ masks
def test_prefix_causal_mask():
  P, L = 2, 4
  pos = jnp.arange(P + L)
  m = np.asarray(causal_mask(pos, pos, P))
  assert m[:P, :P].all()  # the prefix sees itself (both ways)
  assert not m[:P, P:].any()  # ... and never the text
  assert m[P:, :P].all()  # text sees the whole prefix
  assert (m[P:, P:] == np.tril(np.ones((L, L), bool))).all()  # causal text


def test_caption_token_never_sees_later_tokens():
  c = deep_config()
  model = build(c)
  batch = make_batch(c, B=1, W=2)
  memory = memory_fn(model, batch)
  tok = jnp.asarray(batch["captions"][0, :, 0])
  valid = jnp.ones_like(tok, bool)
  group = jnp.array([0, 1])
  base = caption_logits(model, tok, valid, group, memory)
  changed = caption_logits(model, tok.at[:, 10].set(7), valid, group, memory)
  np.testing.assert_allclose(base[:, :10], changed[:, :10], atol=1e-5)
  assert not np.allclose(base[:, 10:], changed[:, 10:])
  other_group = caption_logits(model, tok, valid, group + 1, memory)
  assert not np.allclose(base[:, 0], other_group[:, 0])  # the group prefix conditions every token


# ------------------------------------------------------------------------------- inputs
def test_resampling_keeps_a_sine():
  t128 = np.arange(128 * 30) / 128
  t64 = np.arange(64 * 30) / 64
  down = inputs.resample(jnp.sin(2 * np.pi * 3 * t128), 64 * 30)
  np.testing.assert_allclose(down, np.sin(2 * np.pi * 3 * t64), atol=1e-4)
  t32 = np.arange(32 * 30) / 32
  up = inputs.resample(jnp.sin(2 * np.pi * 0.5 * t32), 64 * 30)
  np.testing.assert_allclose(up, np.sin(2 * np.pi * 0.5 * t64), atol=1e-4)


def smooth_signal(rate, epochs, fmax, seed=0):
  """A long recording: sinusoids + noise, all below fmax Hz (sigma ~ 3)."""
  rng = np.random.default_rng(seed)
  n = rate * 30 * epochs
  t = np.arange(n) / rate
  x = sum(rng.normal() * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
          for f in rng.uniform(0.3, fmax, 8))
  spec = np.fft.rfft(rng.normal(size=n))
  spec[np.fft.rfftfreq(n, 1 / rate) > fmax] = 0
  noise = np.fft.irfft(spec, n)
  return (x + 3 * noise / noise.std()).astype(np.float32)


def resampled_window(name, rate, x, first, present):
  """`assemble` on the window of len(present) epochs from `first`; absent epochs hold junk."""
  W = len(present)
  win = x.reshape(-1, rate * 30)[first:first + W].copy()
  win[~np.asarray(present)] = 7.0
  signals = {name: jnp.asarray(win)[None, :, None]}
  masks = {name: jnp.asarray(present)[None, :, None]}
  return np.asarray(inputs.assemble(signals, masks, (f"{name}:0",))[0][0, :, 0])


def long_context(x, first, W, epochs):
  """The window's epochs resampled with the whole recording around them, z-scored per epoch."""
  ref = np.asarray(inputs.resample(jnp.asarray(x), epochs * 64 * 30)).reshape(epochs, -1)
  ref = ref[first:first + W]
  return (ref - ref.mean(-1, keepdims=True)) / ref.std(-1, keepdims=True)


# (modality, rate, content below fmax Hz): EEG-like at 128 Hz, respiration at 32 Hz (upsampled)
RECORDINGS = [("eeg", 128, 8.0), ("airflow", 32, 1.0)]


@pytest.mark.parametrize("name, rate, fmax", RECORDINGS)
@pytest.mark.parametrize("W", [1, 2])
def test_window_edges_match_long_context_resampling(name, rate, fmax, W):
  """The FFT is circular: the window's first and last 0.5 s must not ring from its far end."""
  epochs, first, edge = 12, 5, 32  # edge: 0.5 s at 64 Hz
  x = smooth_signal(rate, epochs, fmax)
  got = resampled_window(name, rate, x, first, np.ones(W, bool))
  want = long_context(x, first, W, epochs)
  np.testing.assert_allclose(got[0, :edge], want[0, :edge], atol=0.02)  # z-scored: 2 % of sigma
  np.testing.assert_allclose(got[-1, -edge:], want[-1, -edge:], atol=0.02)
  np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("name, rate, fmax", RECORDINGS)
def test_epochs_next_to_an_absent_one_match_long_context_resampling(name, rate, fmax):
  epochs, first, edge = 12, 5, 32
  x = smooth_signal(rate, epochs, fmax, seed=1)
  got = resampled_window(name, rate, x, first, np.array([True, False, True]))
  want = long_context(x, first, 3, epochs)
  np.testing.assert_allclose(got[0, -edge:], want[0, -edge:], atol=0.02)
  np.testing.assert_allclose(got[2, :edge], want[2, :edge], atol=0.02)
  assert (got[1] == 0).all()


@pytest.mark.parametrize("memory", ["pooled+tokens", "pooled"])  # tiny's; the released model's
def test_absent_channel_values_change_nothing(memory):
  c = config()
  c.model.signal.decoder_memory = memory
  model = build(c)
  batch = make_batch(c)
  batch["masks"]["eeg"][:, :, 1] = False
  batch["masks"]["ecg"][0, 1] = False
  other = jax.tree.map(np.copy, batch)
  other["signals"]["eeg"][:, :, 1] = 1e3 * np.random.default_rng(1).normal(
      size=other["signals"]["eeg"][:, :, 1].shape)
  other["signals"]["ecg"][0, 1] = 55.0
  key = jax.random.key(0)
  for fn in (lambda b: embed_fn(model, b), lambda b: loss_fn(model, b, key)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 fn(batch), fn(other))
  x, present = nnx.jit(lambda m, b: m.inputs(b["signals"], b["masks"]))(model, batch)
  assert x.shape == (2, 2, 10, 1920)
  assert not present[..., 9].any()  # position: not a canonical modality -> absent
  assert not present[..., 6].any()  # EEG C3 (eeg:1) masked above
  assert (x[..., 9, :] == 0).all()


def test_batch_without_a_modality():
  c = config()
  model = build(c)
  batch = make_batch(c)
  for key in ("signals", "masks"):
    for m in ("eeg", "ecg", "emg"):
      del batch[key][m]
  loss, metrics = loss_fn(model, batch, jax.random.key(0))
  assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())


# ------------------------------------------------------------------------------- losses vs NumPy
def _np_logsumexp(x, axis):
  mx = x.max(axis, keepdims=True)
  return (mx + np.log(np.exp(x - mx).sum(axis, keepdims=True))).squeeze(axis)


def np_clip(a, b, scale, negative=None):
  """NumPy CLIP loss over rows of a, b; negative[i, j] False removes pair (i, j) (i != j)."""
  an = a / np.linalg.norm(a, axis=1, keepdims=True)
  bn = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = scale * an @ bn.T
  if negative is not None:
    logits = np.where(negative | np.eye(len(a), dtype=bool), logits, -np.inf)
  diag = np.diag(logits)
  return 0.5 * ((_np_logsumexp(logits, 1) - diag).mean() + (_np_logsumexp(logits, 0) - diag).mean())


def test_clip_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  log_scale = np.log(1 / 0.07)
  got, _ = objectives.clip_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(valid), log_scale)
  np.testing.assert_allclose(got, np_clip(a[valid], b[valid], 1 / 0.07), rtol=1e-4)
  same = np.eye(6, dtype=bool)
  same[0, 3] = same[3, 0] = True
  got, _ = objectives.clip_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(valid), log_scale,
                                jnp.asarray(same))
  want = np_clip(a[valid], b[valid], 1 / 0.07, ~same[valid][:, valid])
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_logit_scale_is_bounded_with_a_gradient_everywhere():
  """The scale starts at 1/0.07, never exceeds 100, and past the bound still has a gradient (a
  `minimum` on the use zeroes it there, so the optimiser could never bring it back)."""
  c = config()
  model = build(c)
  batch = make_batch(c)
  np.testing.assert_allclose(loss_fn(model, batch, jax.random.key(0))[1]["logit_scale"], 1 / 0.07,
                             rtol=1e-5)
  x, present = nnx.jit(family.flat_inputs)(model, batch)
  sig = nnx.jit(lambda m, x, p: m.encode_signal(x, p))(model, x, present)
  tokens = jnp.asarray(batch["captions"][:, :, 0].reshape(4, -1))
  group, row = jnp.zeros(4, jnp.int32), jnp.ones(4, bool)
  model.logit_scale[...] = jnp.asarray(np.log(100.0) + 1.0)
  graphdef, scale, rest = nnx.split(model, lambda path, _: path[-1] == "logit_scale", ...)

  def con(s):  # the contrastive term as the loss computes it, differentiated w.r.t. the scale
    terms = family.group_terms(nnx.merge(graphdef, s, rest), sig, tokens, tokens != 0, group, row,
                               jnp.asarray(batch["features"].reshape(4, -1)))
    return terms["con"]

  loss_con, grads = jax.jit(jax.value_and_grad(con))(scale)
  assert abs(float(jax.tree.leaves(grads)[0])) > 1e-4 * abs(float(loss_con))
  assert 50.0 < loss_fn(model, batch, jax.random.key(0))[1]["logit_scale"] <= 100.0


def test_retrieval_top1_averages_both_directions():
  signal = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  text = jnp.array([[1.0, 0.1], [0.9, 0.5]])  # signal->text: 0->0, 1->1; text->signal: 0->0, 1->0
  valid = jnp.ones(2, bool)
  _, top1 = objectives.clip_loss(signal, text, valid, 0.0)
  np.testing.assert_allclose(top1, 0.75)
  _, top1 = objectives.clip_loss(signal, text, valid, 0.0, jnp.ones((2, 2), bool))
  np.testing.assert_allclose(top1, 1.0)


def test_identical_captions_are_not_negatives():
  """Epochs 0 and 2 carry the same caption (every group), so (0, 2) and (2, 0) are not negatives."""
  c = config()
  model = build(c)
  batch = make_batch(c, B=2, W=2)
  caps = batch["captions"]
  caps[:] = caps[:, :, :1]  # one caption per epoch whichever group is drawn
  caps[1, 0] = caps[0, 0]
  batch["caption_mask"] = caps != 0
  _, metrics = loss_fn(model, batch, jax.random.key(0))
  x, present = nnx.jit(family.flat_inputs)(model, batch)
  signal = nnx.jit(lambda m, x, p: m.encode_signal(x, p)["latent"])(model, x, present)
  tokens = jnp.asarray(caps[:, :, 0].reshape(4, -1))
  text = nnx.jit(lambda m, t: m.encode_text(t, t != 0)["latent"])(model, tokens)
  scale = float(metrics["logit_scale"])
  negative = ~np.eye(4, dtype=bool)
  negative[0, 2] = negative[2, 0] = False
  want = np_clip(np.asarray(signal), np.asarray(text), scale, negative)
  with_duplicates = np_clip(np.asarray(signal), np.asarray(text), scale)
  assert abs(want - with_duplicates) > 1e-3  # the fixture can tell the two apart
  np.testing.assert_allclose(metrics["loss_con"], want, rtol=1e-4)
  same = np.asarray(objectives.same_caption(tokens))
  np.testing.assert_array_equal(same, ~negative)


def test_captions_saying_the_same_are_not_negatives():
  """Epochs 0 and 2 have other captions (token ids) but the same features: whichever group is
  drawn, their captions say the same thing in other words, so (0, 2) are not negatives; with
  `objective.content_positives=False` they are."""
  c = config()
  batch = make_batch(c, B=2, W=2)
  batch["features"][1, 0] = batch["features"][0, 0]
  # a key for which the loss draws one group for epochs 0 and 2 (other groups: other contents)
  key = next(k for k in map(jax.random.key, range(100))
             if len(set(np.asarray(jax.random.categorical(k, jnp.zeros((4, 5))))[[0, 2]])) == 1)
  losses = {}
  for content in (True, False):
    c.objective.content_positives = content
    assert ("features" in family.fields(c)) == content  # the pipeline reads them only then
    model = build(c)
    _, metrics = loss_fn(model, batch, key)
    x, present = nnx.jit(family.flat_inputs)(model, batch)
    signal = nnx.jit(lambda m, x, p: m.encode_signal(x, p)["latent"])(model, x, present)
    group = jax.random.categorical(key, jnp.zeros((4, 5)))  # the loss's draw
    tokens = jnp.asarray(batch["captions"].reshape(4, 5, -1)[jnp.arange(4), group])
    text = nnx.jit(lambda m, t: m.encode_text(t, t != 0)["latent"])(model, tokens)
    negative = ~np.eye(4, dtype=bool)
    if content:
      negative[0, 2] = negative[2, 0] = False
    want = np_clip(np.asarray(signal), np.asarray(text), float(metrics["logit_scale"]), negative)
    np.testing.assert_allclose(metrics["loss_con"], want, rtol=1e-4)
    losses[content] = float(metrics["loss_con"])
  assert abs(losses[True] - losses[False]) > 1e-3  # the fixture can tell the two apart


def test_content_key_equal_only_for_captions_saying_the_same():
  from data_prep import captions as C  # pylint: disable=g-import-not-at-top
  from tests.test_features import synthetic_night  # pylint: disable=g-import-not-at-top
  f = synthetic_night()[-1]
  stated, per_unit = C.content_grid()
  equal_pairs = 0
  for g, name in enumerate(C.GROUPS):
    keys = np.asarray(objectives.content_key(jnp.asarray(f), jnp.full(len(f), g), stated, per_unit))
    said = [C.content(row, name) for row in f]
    for i in range(len(f)):
      for j in range(i):
        if (keys[i] == keys[j]).all():
          assert said[i] == said[j], (name, said[i], said[j])
          equal_pairs += 1
  assert equal_pairs > 100  # the night has epochs that say the same (stage sentences, positions)
  other = np.asarray(objectives.content_key(jnp.asarray(f[:1]), jnp.ones(1, jnp.int32), stated,
                                            per_unit))
  assert other[0, 0] == 1 and not (other == keys[:1]).all()  # another group: another key


def test_caption_loss_matches_numpy():
  rng = np.random.default_rng(0)
  N, L, V = 3, 6, 11
  logits = rng.normal(size=(N, L, V))
  tokens = rng.integers(0, V, size=(N, L))
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], bool)
  row = np.array([True, True, False])
  got, _ = objectives.caption_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(valid),
                                   jnp.asarray(row))
  nll = []
  for n in range(N):
    for i in range(L - 1):
      if valid[n, i + 1] and row[n]:
        lp = logits[n, i] - _np_logsumexp(logits[n, i], 0)
        nll.append(-lp[tokens[n, i + 1]])
  np.testing.assert_allclose(got, np.mean(nll), rtol=1e-5)


def test_recon_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
  present = np.array([[1, 0, 1], [0, 0, 1]], bool)
  got = objectives.recon_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(present))
  want = np.mean([((pred[n, k] - target[n, k]) ** 2).mean() for n in range(2) for k in range(3)
                  if present[n, k]])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_terms_and_weights():
  c = config()
  model = build(c)
  loss, m = loss_fn(model, make_batch(c), jax.random.key(0))
  want = 1.0 * m["loss_con"] + 2.0 * m["loss_cap"] + 1.0 * m["loss_rec"]
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  c.objective.caption_groups = "all"
  model = build(c)
  loss_all, m_all = loss_fn(model, make_batch(c), jax.random.key(0))
  assert np.isfinite(loss_all) and set(m_all) == set(m)


def test_flops_positive_and_scale_with_batch():
  c = config("base")
  f1 = family.flops(c, MODALITIES, 8, 1)
  f2 = family.flops(c, MODALITIES, 16, 1)
  assert 1.9 < f2 / f1 < 2.1
  # ~6 x params x tokens is a floor for the encoder alone (1200 tokens per epoch, 46M block params)
  assert f1 > 8 * 6 * 46e6 * 1200


def test_caption_loss_falls_in_a_short_training_run():
  import optax  # pylint: disable=g-import-not-at-top
  c = config()
  graphdef, params = nnx.split(build(c))
  batch = make_batch(c, B=2, W=2)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, key):
    f = lambda p: family.loss(nnx.merge(graphdef, p), batch, key)
    (_, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, history = tx.init(params), []
  for i in range(12):
    params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
    history.append({k: float(v) for k, v in metrics.items()})
  first, last = history[0], history[-1]
  assert last["loss_cap"] < 0.85 * first["loss_cap"], (first, last)
  assert last["loss_rec"] < first["loss_rec"], (first, last)
