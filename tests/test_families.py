"""The family interface drives train and eval; EMA; presets; pair-first compute; strategies."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sleepjax import families
from sleepjax.cli import load_config
from sleepjax.families import Family, get_family
from sleepjax.train import state as state_lib
from sleepjax.train.optim import make_optimizer
from sleepjax.train.step import ema_initial_weight, ema_momentum, ema_update, make_train_step
from tests.conftest import REPO

# sleep2vec's own inputs: four single-channel 3840-sample modalities, five 120-sample ones.
NINE = {"eeg": (128, 1), "eog": (128, 1), "emg": (128, 1), "ecg": (128, 1), "heart_rate": (4, 1),
        "spo2": (4, 1), "airflow": (4, 1), "nasal_pressure": (4, 1), "resp_effort": (4, 1)}


class Toy(nnx.Module):
  def __init__(self, rngs):
    self.w = nnx.Param(jnp.full((3,), 2.0))


def _toy_family():
  def loss(model, batch, rng):
    del rng
    return jnp.sum(model.w.value ** 2) * jnp.mean(batch["signals"]["eeg"]), {"toy": jnp.ones(())}

  def embed(model, batch):
    B, W = batch["signals"]["eeg"].shape[:2]
    return {"epoch": jnp.broadcast_to(model.w.value, (B, W, 3))}

  return Family(name="toy", build=lambda config, modalities, rngs: Toy(rngs), loss=loss,
                embed=embed, flops=lambda *a, **k: 1.0, fields=lambda config: ())


@pytest.fixture
def toy(monkeypatch, tiny_config):
  monkeypatch.setitem(families.FAMILIES, "toy", _toy_family())
  config = tiny_config.copy_and_resolve_references()
  config.model.family = "toy"
  return config


def test_family_dict_drives_the_train_step_and_ema(toy):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
  tx, schedule = make_optimizer(toy.optim, toy.train.steps)
  graphdef, _, shardings = state_lib.abstract_state(toy, {"eeg": (128, 1)}, tx, mesh, 0)
  state = state_lib.init_state(toy, {"eeg": (128, 1)}, tx, shardings, 0)
  assert isinstance(nnx.merge(graphdef, state.params), Toy)
  step = jax.jit(make_train_step(graphdef, tx, schedule, toy))
  batch = {"signals": {"eeg": jnp.ones((8, 2, 1, 3840))}, "masks": {"eeg": jnp.ones((8, 2, 1), bool)}}
  for _ in range(3):
    before = state
    state, metrics = step(state, batch)
  assert float(metrics["toy"]) == 1.0 and np.isclose(metrics["loss"], np.sum(before.params["w"].value ** 2))
  m = ema_momentum(2, toy.train.steps, toy.train.ema_momentum)
  np.testing.assert_allclose(state.ema_params["w"].value,
                             m * before.ema_params["w"].value + (1 - m) * state.params["w"].value, rtol=1e-6)
  assert not np.allclose(state.ema_params["w"].value, state.params["w"].value)  # lags the weights


def test_a_nonfinite_step_is_skipped(toy):
  """A NaN step keeps parameters and EMA exactly, gives AdamW a zero gradient (moments x b1 / b2,
  count + 1), advances the step counter; the next finite step trains on."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
  tx, schedule = make_optimizer(toy.optim, toy.train.steps)
  graphdef, _, shardings = state_lib.abstract_state(toy, {"eeg": (128, 1)}, tx, mesh, 0)
  good = {"signals": {"eeg": jnp.ones((8, 2, 1, 3840))}, "masks": {"eeg": jnp.ones((8, 2, 1), bool)}}
  bad = {**good, "signals": {"eeg": good["signals"]["eeg"].at[0, 0, 0, 0].set(jnp.nan)}}
  step = jax.jit(make_train_step(graphdef, tx, schedule, toy))
  state = state_lib.init_state(toy, {"eeg": (128, 1)}, tx, shardings, 0)
  history = []
  for batch in (good, bad, good):
    state, metrics = step(state, batch)
    history.append((state, float(metrics["skipped"])))
  assert [h[1] for h in history] == [0.0, 1.0, 0.0] and [int(h[0].step) for h in history] == [1, 2, 3]
  (before, _), (skipped, _), (after, _) = history
  for name in ("params", "ema_params"):
    for a, b in zip(jax.tree.leaves(getattr(skipped, name)), jax.tree.leaves(getattr(before, name))):
      np.testing.assert_array_equal(a, b)
  adam = lambda s: next(x for x in jax.tree.leaves(
      s.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(x, optax.ScaleByAdamState))
  b1, b2 = toy.optim.get("b1", 0.9), toy.optim.b2
  np.testing.assert_array_equal(adam(skipped).mu["w"].value,
                                np.float32(b1) * adam(before).mu["w"].value)
  np.testing.assert_array_equal(adam(skipped).nu["w"].value,
                                np.float32(b2) * adam(before).nu["w"].value)
  assert int(adam(skipped).count) == int(adam(before).count) + 1
  assert not np.array_equal(after.params["w"].value, skipped.params["w"].value)


def test_family_dict_drives_eval(toy, prepared):
  from sleepjax.evaluate.embed import Encoder, embed_function, embed_split  # pylint: disable=g-import-not-at-top
  from sleepjax.train.trainer import setup  # pylint: disable=g-import-not-at-top
  mesh, manifest, modalities, tx, _ = setup(toy, str(prepared))
  graphdef, _, shardings = state_lib.abstract_state(toy, modalities, tx, mesh, 0)
  params = state_lib.init_state(toy, modalities, tx, shardings, 0).params
  encoder = Encoder("toy", graphdef, params, embed_function(toy))
  table = embed_split(encoder, manifest, "test", list(modalities), toy, mesh, keep=("epoch",))
  x, y = table["epoch"], table["stage"]
  assert x.shape[-1] == 3 and x.shape[:2] == y.shape and np.all(x == 2.0)


def test_unknown_family_is_one_clear_error(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.family = "nope"
  with pytest.raises(ValueError, match="model.family='nope'"):
    get_family(config)


def test_ema_momentum_schedule_and_update():
  np.testing.assert_allclose(ema_momentum(0, 100, 0.996), 0.996, rtol=1e-7)
  np.testing.assert_allclose(ema_momentum(50, 100, 0.996), 0.998, rtol=1e-7)
  np.testing.assert_allclose(ema_momentum(100, 100, 0.996), 1.0, rtol=1e-7)
  np.testing.assert_allclose(ema_momentum(500, 100, 0.996), 1.0, rtol=1e-7)
  ema = {"a": jnp.ones(3), "b": {"c": jnp.zeros(2)}}
  params = {"a": jnp.full(3, 3.0), "b": {"c": jnp.ones(2)}}
  out = ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["a"], 0.9 + 0.1 * 3.0, rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.1, rtol=1e-6)


def test_ema_initial_weight_is_what_the_updates_leave_of_the_init():
  # An EMA that starts at 1 while the parameters sit at 0 holds exactly the init's weight.
  for steps, base in ((300, 0.996), (300, 0.95), (40, 0.9)):
    ema = {"w": jnp.ones(())}
    for t in range(steps):
      ema = ema_update(ema, {"w": jnp.zeros(())}, ema_momentum(t, steps, base))
    np.testing.assert_allclose(ema_initial_weight(steps, base), float(ema["w"]), rtol=1e-4)
  # The paper's momentum over a demo-length run would evaluate mostly the random init; the demo
  # preset's does not.
  assert ema_initial_weight(300, 0.996) > 0.5
  c = load_config(str(REPO / "configs" / "smoke.py"))
  assert ema_initial_weight(c.train.steps, c.train.ema_momentum) < 0.01


def _expected_params(width, depth, mlp, signal_tokenizer_width, proj=128, modalities=NINE):
  """sleep2vec's parameter count from the architecture (not from the implementation)."""
  d, dt = width, signal_tokenizer_width or width
  total = 0
  for rate, channels in modalities.values():
    n_in = channels * rate * 30
    total += (n_in * 2 * dt + 2 * dt) + (2 * dt * dt + dt) + (n_in * dt + dt) + 2 * dt
  if dt != d:
    total += dt * d + d  # one shared projection of the tokens to the transformer width
  total += 2 * len(modalities) * d  # modality embeddings + mask tokens
  attention = 4 * (d * d + d)
  block = attention + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d
  total += depth * block + 2 * d  # + final LayerNorm
  total += d * d + 2 * d + d * proj + 2 * proj  # Linear, BN, ReLU, Linear, BN (no bias before a BN)
  return total


@pytest.mark.parametrize("preset,paper,shape", [("dense", 134e6, (768, 12, 3072, 0)),
                                                ("large", 217e6, (1024, 16, 3072, 768))])
def test_preset_parameter_counts(preset, paper, shape):
  config = load_config(f"{REPO / 'configs' / 'sleep2vec.py'}:{preset}")
  expected = _expected_params(*shape)
  assert abs(expected - paper) / paper <= 0.02, (expected, paper)
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config, NINE, 0))
  assert state_lib.count_params(nnx.state(abstract, nnx.Param)) == expected
  assert config.data.window_epochs == 120 and config.prep.segment_epochs >= 120
  assert config.objective.pair_strategy == "pair_first" and config.objective.loss == "dash"


def test_size_table_spans_1m_to_1b():
  from sleepjax.cli import load_config as load  # pylint: disable=g-import-not-at-top
  counts = {}
  for size in ("1m", "1b"):
    config = load(f"{REPO / 'configs' / 'sleep2vec.py'}:size={size}")
    abstract = nnx.eval_shape(lambda c=config: state_lib.build_model(c, NINE, 0))
    counts[size] = state_lib.count_params(nnx.state(abstract, nnx.Param))
  assert counts["1m"] < 2e6 and counts["1b"] >= 1e9


def _compiled_flops(config, names, B=8, W=16):
  rng = np.random.default_rng(0)
  batch = {"signals": {m: jnp.asarray(rng.normal(size=(B, W, c, r * 30)), jnp.float32)
                       for m, (r, c) in NINE.items() if m in names},
           "masks": {m: jnp.ones((B, W, c), bool) for m, (r, c) in NINE.items() if m in names},
           "age": jnp.full(B, 40.0), "sex": jnp.zeros(B, jnp.int32), "site": jnp.zeros(B, jnp.int32),
           "recording": jnp.arange(B)}
  family = get_family(config)
  graphdef, params = nnx.split(state_lib.build_model(config, NINE, 0))
  grad = jax.value_and_grad(lambda p, b, r: family.loss(nnx.merge(graphdef, p), b, r), has_aux=True)
  cost = jax.jit(grad).lower(params, batch, jax.random.key(0)).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_pair_first_compiles_to_under_40_percent_of_all_modalities(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.update(dict(width=64, depth=4, heads=4, mlp=256, proj_dim=32))
  config.objective.pair_strategy = "all_pairs"
  all_modalities = _compiled_flops(config, list(NINE))
  config.objective.pair_strategy = "pair_first"
  # The costliest pair: two 3840-sample modalities.
  pair = _compiled_flops(config, ["eeg", "ecg"])
  assert pair <= 0.4 * all_modalities, (pair, all_modalities)
  analytic = get_family(config).flops(config, NINE, 8, 16, encoded=("eeg", "ecg"))
  assert abs(analytic - pair) / pair < 0.15, (analytic, pair)


@pytest.mark.parametrize("strategy,negatives,loss", [("pair_first", "per_step", "dash"),
                                                     ("all_pairs", "all_tokens", "info_nce"),
                                                     ("leave_one_out", "per_step", "dash")])
def test_cpu_smoke_run_of_each_strategy(prepared, tiny_config, tmp_path, strategy, negatives, loss):
  from sleepjax.train import trainer  # pylint: disable=g-import-not-at-top
  os.symlink(prepared / "data", tmp_path / "data")
  config = tiny_config.copy_and_resolve_references()
  config.objective.update(dict(pair_strategy=strategy, negatives=negatives, loss=loss))
  config.data.modalities = ("eeg", "ecg", "spo2")  # 3 of the cohort's 7: a third of the compile
  if strategy == "pair_first":
    config.data.modality_sampling = "pair_first"
  config.train.steps, config.train.log_every = 2, 1
  last = trainer.train(config, str(tmp_path))
  assert np.isfinite(last["loss"]) and last["loss"] > 0


def test_tracing_a_model_build_never_walks_the_trace(monkeypatch):
  """NNX probes `value.sharding` on every Variable assignment; a JAX tracer's AttributeError for
  it walks every equation traced so far (quadratic tracing: SleepLM-Base's abstract state took
  26 CPU-s). Building a model traced (abstract state, jitted init) must never take that walk, and
  JAX's own property is back afterwards."""
  from jax._src import core  # pylint: disable=g-import-not-at-top
  from jax._src.interpreters import partial_eval  # pylint: disable=g-import-not-at-top
  walks = []
  walk = partial_eval.JaxprStackFrame.find_progenitors
  monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors",
                      lambda self, tracer: walks.append(1) or walk(self, tracer))
  config = load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny")
  config.data.modalities = ("eeg", "ecg")
  modalities = {"eeg": (128, 2), "ecg": (128, 1)}
  tx, _ = make_optimizer(config.optim, 10)
  original = core.Tracer.sharding
  jax.eval_shape(lambda: nnx.state(state_lib.build_model(config, modalities, 0)))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
  state_lib.abstract_state(config, modalities, tx, mesh, 0)
  assert walks == []
  # outside a build, JAX's own property (and its walk) is back; getattr's default works
  assert core.Tracer.sharding is original
  probed = []
  jax.eval_shape(lambda: probed.append(getattr(jnp.zeros(()) + 1, "sharding", "absent")))
  assert probed == ["absent"] and len(walks) == 1
