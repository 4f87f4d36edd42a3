"""`sleepjax adapt`: new modalities grafted onto a pretrained sleep2vec model. Stage 1 leaves every
pretrained parameter bitwise; stage 2's per-group learning-rate scales show in the updates; the
pair sampler anneals the share of pairs with a new modality; the adapted checkpoint restores and
embeds a night that has only the new modality; each stage compiles one train step, whatever pairs
it draws, and its batches (every modality's keys + the pair) train as the pair's own batches."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sleepjax.data import pipeline, sampling
from sleepjax.data.manifest import read_manifest
from sleepjax.families import get_family
from sleepjax.train import adapt, checkpoint, gradcache, state as state_lib, trainer

OLD = {"eeg": (128, 2), "ecg": (128, 1)}
NEW = ("ppg",)
NAMES = ["eeg", "ecg", "ppg"]


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def grafted(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.optim.warmup_steps, config.optim.warmup_fraction = 0, 0.0  # a full first step
  _, old = nnx.split(state_lib.build_model(config, OLD, 0), nnx.Param)
  _, fresh = nnx.split(state_lib.build_model(config, {**OLD, "ppg": (64, 1)}, 1), nnx.Param)
  fresh = jax.tree.map(jnp.asarray, fresh)
  return config, old, adapt.graft(fresh, old, list(OLD), NAMES)


def test_graft_copies_every_pretrained_leaf_and_row(grafted):
  _, old, params = grafted
  before, after = _leaves(old), _leaves(params)
  for k, x in before.items():
    if any(t in k for t in adapt.TABLES):
      assert after[k][:2].tobytes() == x.tobytes(), k  # eeg, ecg rows; ppg's row is new
      assert after[k].shape[0] == 3
    else:
      assert after[k].tobytes() == x.tobytes(), k
  assert any("['tokenizers']['ppg']" in k for k in after)
  groups = {adapt.group(p, NEW) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert groups == {"encoder", "tokenizers", "new", "tables"}


def _step(config, params, scales, seed=0):
  tx, _ = adapt.make_optimizer(config, params, NEW, NAMES, scales, start=0, steps=10)
  rng = np.random.default_rng(seed)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)

  @jax.jit  # eager, each leaf's every optimizer op would compile on its own
  def step(params, grads):
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), updates
  return jax.device_get(step(params, grads))


def test_stage1_changes_no_pretrained_parameter(grafted):
  config, _, params = grafted
  after, _ = _step(config, params, {"encoder": 0.0, "tokenizers": 0.0, "new": 1.0})
  before, after = _leaves(params), _leaves(after)
  for k, x in before.items():
    if "['tokenizers']['ppg']" in k:
      assert after[k].tobytes() != x.tobytes(), k
    elif any(t in k for t in adapt.TABLES):
      assert after[k][:2].tobytes() == x[:2].tobytes(), k
      assert after[k][2].tobytes() != x[2].tobytes(), k  # the new modality's row trains
    else:
      assert after[k].tobytes() == x.tobytes(), k


def test_stage2_lr_scales_show_in_the_updates(grafted):
  config, _, params = grafted
  scales = {"encoder": 0.1, "tokenizers": 0.5, "new": 1.0}
  _, scaled = _step(config, params, scales)
  _, plain = _step(config, params, {"encoder": 1.0, "tokenizers": 1.0, "new": 1.0})
  ratio = {}
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(scaled), jax.tree.leaves(plain)):
    g = adapt.group(path, NEW)
    if g == "tables":
      for i, m in enumerate(NAMES):
        ratio.setdefault("new" if m in NEW else "encoder", []).append(
            float(np.abs(u[i]).sum() / np.abs(v[i]).sum()))
    elif float(np.abs(v).sum()) > 0:
      ratio.setdefault(g, []).append(float(np.abs(u).sum() / np.abs(v).sum()))
  for g, s in scales.items():
    np.testing.assert_allclose(ratio[g], s, rtol=1e-5, err_msg=g)


def test_pair_share_anneals_on_sampled_pairs():
  """eeg+ecg, eeg+ppg, ecg+ppg: the share of drawn pairs with ppg follows 1.0 until 25 %, 0.7 at
  50 %, 0.0 at 100 % (1000 draws per point: binomial sd <= 0.016, tolerance 0.05)."""
  pairs = ((0, 1), (0, 2), (1, 2))
  share = sampling.PairShare(NEW, (0.25, 0.5, 1.0), (1.0, 0.7, 0.0), steps=100)
  members = tuple(np.arange(4) for _ in pairs)

  def drawn_share(step):
    hits = [sampling.PairFirstIndex(pairs, np.full(3, 1 / 3), members, 1, seed, 0, share,
                                    (False, True, True)).map_with_index(step, None)[1] != 0
            for seed in range(1000)]
    return np.mean(hits)
  assert drawn_share(0) == 1.0 and drawn_share(24) == 1.0
  assert abs(drawn_share(50) - 0.7) < 0.05 and abs(drawn_share(75) - 0.35) < 0.05
  assert drawn_share(100) == 0.0
  plain = sampling.PairFirstIndex(pairs, np.full(3, 1 / 3), members, 1, 0, 0)
  assert np.mean([plain.map_with_index(s, None)[1] != 0 for s in range(3000)]) == pytest.approx(
      2 / 3, abs=0.05)


@pytest.fixture(scope="module")
def adapted(tiny_config, tmp_path_factory):
  """An EEG + ECG model pretrained on a wearable cohort (2 steps), then adapted to its PPG +
  actigraphy (2 + 2 steps): 4 modalities, so the one-program step switches over 6 pairs (grafted
  onto the shared 7-modality run, 36)."""
  from data_prep import prep, synthetic  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("adapt")
  config = tiny_config.copy_and_resolve_references()
  config.synthetic.wearables, config.synthetic.hours = True, 0.5  # half the preset's nights
  synthetic.write_cohort(workdir / "raw", **config.synthetic)
  config.prep.modalities = ("eeg", "ecg", "ppg", "actigraphy")
  prep.prepare(workdir / "raw", workdir / "data", config.prep)
  pretrained = workdir / "pretrained"
  pretrained.mkdir()
  (pretrained / "data").symlink_to(workdir / "data")
  psg = tiny_config.copy_and_resolve_references()
  psg.data.modalities = ("eeg", "ecg")
  psg.train.steps = psg.train.checkpoint_every = 2
  trainer.train(psg, str(pretrained))
  config.adapt.pretrained = str(pretrained)
  config.adapt.new_modalities = ("ppg", "actigraphy")
  config.adapt.stage1_steps = config.adapt.stage2_steps = 2
  lowered = collections.Counter()  # programs lowered for XLA (compiled, or read from a cache)

  def count(event, _, fun_name="", **__):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered[fun_name] += 1
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    last = adapt.adapt(config, str(workdir))
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  return pretrained, workdir, config, last, lowered


def test_adapt_compiles_one_train_step_per_stage(adapted):
  """Over 2 + 2 steps, whatever pairs they draw (the previous code, pair-only batches and a jit
  without the state's shardings, lowered one train step per pair drawn)."""
  *_, lowered = adapted
  assert lowered["jit(train_step)"] == 2, lowered


def test_one_program_batch_trains_as_the_pair_only_batch(adapted):
  """The same records, windows and pair as a batch of every modality (`data.pair_keys="all"`)
  and as the pair's own batch: the same loss and gradients."""
  _, workdir, config, *_ = adapted
  manifest = read_manifest(workdir / "data")
  names = list(manifest["modalities"])
  modalities = state_lib.model_modalities(manifest, names)

  def batch(pair_keys):
    ds = pipeline.make_dataset(manifest, "train", names, local_batch=8, seed=3, train=True,
                               window=config.data.window_epochs, sampling="pair_first",
                               pair_keys=pair_keys)
    return pipeline.nest(next(iter(ds)))
  pair_only, every = batch("pair"), batch("all")
  assert len(pair_only["masks"]) == 2 and set(every["masks"]) == set(names)
  assert [names[i] for i in every["pair"][0]] == list(pair_only["masks"])
  assert (every["pair"] == every["pair"][:1]).all()
  for m in set(names) - set(pair_only["masks"]):
    assert not every["masks"][m].any() and not every["signals"][m].any()
  for m in pair_only["masks"]:
    np.testing.assert_array_equal(every["signals"][m], pair_only["signals"][m])
  graphdef, params = nnx.split(state_lib.build_model(config, modalities, 0), nnx.Param)
  family, rng = get_family(config), jax.random.key(0)
  # jitted, as the train step runs it (eagerly, every op compiles on its own: 2.5x the CPU)
  value_and_grad = jax.jit(lambda p, b: gradcache.value_and_grad(family, graphdef, p, b, rng, 1))
  (loss_a, _), grads_a = value_and_grad(params, pair_only)
  (loss_b, _), grads_b = value_and_grad(params, every)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  # two programs, fused differently: float32 rounding apart, relative to the largest gradient
  # (the tokenizers of modalities outside the pair: exactly zero in both)
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(grads_a))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))
    if "tokenizers" in jax.tree_util.keystr(path) and not float(jnp.abs(a).max()):
      assert not float(jnp.abs(b).max()), jax.tree_util.keystr(path)


def test_adapted_checkpoint_restores_and_embeds_a_wearable_night(adapted):
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  pretrained, workdir, config, last, _ = adapted
  assert np.isfinite(last["loss"])
  ckpt = trainer.checkpoint_dir(str(workdir))
  assert checkpoint.all_steps(ckpt) == [2, 3, 4]  # stage ends and train.checkpoint_every (3)
  model = api.load(workdir)
  assert model.modalities[-2:] == ("ppg", "actigraphy") and model.step == 4
  subj = synthetic.SubjectSpec("sub-9", "site-a-9", "site-a", 40, "F", 25.0, 5.0, ())
  night = synthetic.simulate_night(subj, synthetic.make_site(0, wearables=True), 0.5,
                                   np.random.default_rng(0))
  out = model.embed({"ppg": (night.signals["Pleth"], 64)})
  assert out.epoch.shape[0] == 60 and np.isfinite(out.epoch).all()
  assert out.present[:, list(model.modalities).index("ppg")].all() and out.present.sum() == 60
  # rerunning finds both stages done
  assert adapt.adapt(config, str(workdir)) == {}


def test_adapt_stage1_checkpoint_keeps_the_pretrained_parameters(adapted):
  pretrained, workdir, config, *_ = adapted
  from sleepjax.train import restore as restore_lib  # pylint: disable=g-import-not-at-top
  pre = restore_lib.restore(trainer.checkpoint_dir(str(pretrained)))
  stage1 = restore_lib.restore(trainer.checkpoint_dir(str(workdir)), step=2)
  names = list(stage1.modalities)
  _, abstract, _ = state_lib.abstract_state(stage1.config, stage1.modalities, stage1.tx,
                                            stage1.mesh, stage1.config.seed)
  params, _ = checkpoint.restore_params(trainer.checkpoint_dir(str(workdir)), abstract, 2, "params")
  before, after = _leaves(pre.params), _leaves(params)
  rows = [names.index(m) for m in pre.modalities]
  for k, x in before.items():
    y = after[k][rows] if any(t in k for t in adapt.TABLES) else after[k]
    assert y.tobytes() == x.tobytes(), k


def test_adapt_resumes_inside_and_between_stages_to_the_same_model(adapted, tmp_path):
  """Stopped after step 1 (inside stage 1), at stage 1's end (step 2), after step 3 (inside stage
  2), then run to the end: each rerun continues from its checkpoint's step, optimizer state and
  batches (stage 2 from stage 1's parameters), and the model equals the uninterrupted run's
  bitwise."""
  _, workdir, config, *_ = adapted
  (tmp_path / "data").symlink_to(workdir / "data")
  ckpt = trainer.checkpoint_dir(str(tmp_path))
  for budget, reached in ((1, [1]), (1, [1, 2]), (1, [1, 2, 3]), (0, [1, 2, 3, 4])):
    c = config.copy_and_resolve_references()
    c.train.stop_after_steps = budget
    c.train.keep_checkpoints = 5
    assert np.isfinite(adapt.adapt(c, str(tmp_path))["loss"])
    assert checkpoint.all_steps(ckpt) == reached
  from sleepjax.train import restore as restore_lib  # pylint: disable=g-import-not-at-top
  once = restore_lib.restore(trainer.checkpoint_dir(str(workdir)), step=4)
  resumed = restore_lib.restore(ckpt, step=4)
  for k, x in _leaves(once.params).items():
    assert _leaves(resumed.params)[k].tobytes() == x.tobytes(), k
