"""`sleepjax eval` on a tiny SleepLM checkpoint: text retrieval, zero-shot staging and captioning
rows from the checkpoint alone, aligned with the right reference captions."""

import json
import shutil

import numpy as np
import pytest

from sleepjax.config_tools import load_config
from sleepjax.evaluate import conditioning, embed, run, sleeplm
from tests.conftest import REPO


@pytest.fixture(scope="module")
def workdir(sleeplm_trained, tmp_path_factory):
  """The preset trained (tests/conftest.py), in a workdir of its own: eval writes beside train/."""
  trained = sleeplm_trained[0]
  workdir = tmp_path_factory.mktemp("eval_sleeplm")
  (workdir / "data").symlink_to(trained / "data")
  shutil.copytree(trained / "train", workdir / "train")
  return workdir


def _config():
  config = load_config(f"{REPO / 'configs' / 'sleeplm.py'}:tiny")
  config.eval.tasks = ("sleeplm",)
  config.eval.caption_eval_epochs = 12
  config.eval.caption_examples = 3
  config.eval.retrieval_pool = 24
  return config


def test_caption_segments_spread_over_nights():
  segs = [("b", 10, 5), ("a", 0, 10), ("a", 10, 10), ("b", 0, 10), ("c", 0, 10), ("c", 10, 10)]
  # mean segment 9.17 epochs: 25 epochs -> 3 of the 6 segments, evenly spaced in (night, time)
  assert sleeplm.caption_segments(segs, 25) == {("a", 0), ("b", 0), ("c", 10)}
  assert sleeplm.caption_segments(segs, 18) == {("a", 0), ("c", 10)}
  assert sleeplm.caption_segments(segs, 500) == {s[:2] for s in segs}


def test_sleeplm_rows_from_a_tiny_checkpoint(workdir):
  config = _config()
  report = run.evaluate(config, str(workdir))
  t = report["tasks"]["sleeplm"]
  assert set(t) >= {"pretrained", "random_init", "examples"}
  for enc in ("pretrained", "random_init"):
    r = t[enc]
    z = r["zero_shot"]
    assert sum(map(sum, z["confusion"])) == z["epochs"] > 0 and 0 < z["chance_accuracy"] <= 1
    groups = r["retrieval"]["groups"]
    assert "stage_event" in groups
    for g, v in groups.items():
      for d in ("signal->text", "text->signal"):
        assert v[d]["R@1"] <= v[d]["R@5"] <= v[d]["R@10"]
      assert v["n"] == 24 and 1 <= v["distinct_texts"] <= 24 and 0 < v["chance_R@1"] <= 1
      # the same text says the same thing: same-content hits include the same-text ones
      assert v["distinct_contents"] <= v["distinct_texts"]
      assert v["chance_R@1 same content"] >= v["chance_R@1"]
      assert v["chance_R@1"] <= v["content_oracle_R@1"] <= 1
      for d in ("signal->text", "text->signal"):
        assert all(v[f"{d} same content"][k] >= v[d][k] for k in v[d])
    # paraphrases of one stage collapse into one content
    assert groups["stage_event"]["distinct_contents"] < groups["stage_event"]["distinct_texts"]
    numbers = r["captioning"]["stated_vs_true"]
    assert numbers["numbers"] >= 0 and set(numbers["quantities"]) <= set(r["readout"])
    assert r["readout"]["hr_mean"]["n"] > 20 and np.isfinite(r["readout"]["hr_mean"]["r2"])
    k = r["conditioning"]
    assert k["epochs"] > 20 and k["kl_different_stage"] > 0 and 1 <= k["decoder_stage_rank"] <= 5
    assert 0 <= k["caption_names_stage"] <= 1 and 0 < k["majority_class"] <= 1
    c = r["captioning"]
    # at least 12 epochs (whole segments), every group; stage_event captions are never empty
    assert c["groups"]["stage_event"]["captions"] >= 12
    assert set(c["groups"]) >= {"brain", "cardiac"}
    assert c["captions"] == sum(v["captions"] for v in c["groups"].values())
    assert 0 <= c["bleu"] <= 1 and 0 <= c["rouge_l"] <= 1
    # the references were written from these features: every number they state agrees
    assert c["reference_numeric_faithfulness"] == 1.0
    for g in ("brain", "cardiac"):
      assert c["groups"][g]["reference_numeric_faithfulness"] == 1.0
  assert len(t["examples"]) == 3 and all(e["reference"] for e in t["examples"])
  md = (workdir / "eval" / "report.md").read_text()
  saved = json.loads((workdir / "eval" / "report.json").read_text())
  assert t["examples"][0]["generated"] in md and t["examples"][0]["reference"] in md
  assert "Signal" in md and "zero-shot" in md.lower()
  for image in ("captions", "text_retrieval"):
    assert (workdir / "eval" / saved["images"][image]).read_bytes()[:4] == b"\x89PNG"
    assert f"]({saved['images'][image]})" in md
  assert "text_R@1" in saved["headline"][0]


def test_rows_align_with_their_reference_captions(workdir):
  """Each test epoch's signal row meets its own reference captions: the stage feature the caption
  was written from is the epoch's scored stage, and the stage sentence names it and no other."""
  from data_prep.captions import STAGE_TEMPLATES  # pylint: disable=g-import-not-at-top
  config, (mesh, manifest, modalities), pretrained, _, _ = embed.restore(_config(), str(workdir))
  table = embed.embed_split(pretrained, manifest, "test", list(modalities), config, mesh)
  refs, _ = sleeplm.references(manifest, "test")

  class Ctx:
    recording_ids = sorted(manifest["recordings"])
  rows = sleeplm._rows(Ctx, table, refs)  # pylint: disable=protected-access
  W = table["stage"].shape[1]
  rids = [Ctx.recording_ids[r] for r in np.repeat(table["recording"], W)]
  checked = 0
  for rid, e, stage, caps in zip(rids, table["epoch_index"].reshape(-1), rows["stage"],
                                 rows["captions"]):
    if stage < 0:
      continue
    assert refs[(rid, int(e))][1][0] == stage  # feature 0 is the stage
    said = caps["stage_event"].lower()
    names = [k for k, texts in STAGE_TEMPLATES.items()
             if any(t.rstrip(".").lower() in said for t in texts)]
    assert names == [int(stage)], (stage, said)
    checked += 1
  assert checked == (table["stage"] >= 0).sum() > 20


def test_named_stage():
  said = {"Stage N2 sleep.": 2, "Scored as wake.": 0, "Stage W (wakefulness).": 0, "Wake.": 0,
          "The subject is awake.": 0, "REM sleep.": 4, "Scored as N3 (slow-wave sleep).": 3,
          "Light sleep, stage N1. Arousal from 3 s to 9 s.": 1, "Stage N2 sleep. Stage N3.": -1,
          "Stage sleep.": -1, "": -1}
  assert {t: conditioning.named_stage(t) for t in said} == said


def test_dependence_on_a_tiny_trained_checkpoint(workdir):
  """The next-token distribution after the same prefix differs between epochs of different stages
  on a trained checkpoint; with the cross-attention's output zeroed (a decoder blind to its
  memory) every measure says so: KL 0, the same stage scores on every epoch."""
  from sleepjax import generate  # pylint: disable=g-import-not-at-top
  _, model, manifest, tokenizer, step = generate.restore_model(_config(), str(workdir))
  assert step > 0
  refs, _ = sleeplm.references(manifest, "test")
  segments = [(  # whole test segments: (signals, masks, stages, stage_event references)
      {m[4:]: v for m, v in a.items() if m.startswith("sig/")},
      {m[5:]: v for m, v in a.items() if m.startswith("mask/")}, a["stage"],
      [refs[(rid, first + i)][0]["stage_event"] for i in range(len(a["stage"]))])
      for rid, first, a in sleeplm._segments(manifest, "test", keep=lambda r, f: True)]  # pylint: disable=protected-access
  seen = conditioning.conditioning(model, tokenizer, segments, 16)
  assert seen["pairs_different_stage"] > 20 and seen["kl_different_stage"] > 1e-6
  for block in model.decoder.cross_blocks:
    block.attn.out.kernel.value = np.zeros_like(block.attn.out.kernel.value)
    block.attn.out.bias.value = np.zeros_like(block.attn.out.bias.value)
  blind = conditioning.conditioning(model, tokenizer, segments, 16)
  assert blind["kl_different_stage"] < 1e-9 and blind["kl_same_stage"] < 1e-9
  assert abs(blind["memory_gain"]) < 1e-5 and seen["memory_gain"] != 0
  assert len(set(blind["caption_stage_counts"].values()) - {0}) <= 1  # one caption for all
  assert seen["kl_different_stage"] > 1e4 * max(blind["kl_different_stage"], 1e-12)


def test_top_moments_one_per_episode():
  from sleepjax.evaluate import search  # pylint: disable=g-import-not-at-top
  sim = np.array([0.1, 0.9, 0.8, np.nan, 0.2, 0.7, 0.0, 0.3])
  got = search.top_moments(sim, k=3, gap=1)  # 2 and 4 neighbour a higher epoch
  assert [m.epoch for m in got] == [1, 5, 7] and got[0].clock == "+00:00:30"
  assert [m.offset_s for m in got] == [30, 150, 210]


def test_search_ranks_the_planted_event_first(workdir):
  """A constructed night whose epochs 40-41 carry the prompt's own embedding (plus noise) and whose
  other epochs are orthogonal to it: `Model.search` (the real text tower, tokenizer and ranking)
  puts the planted epochs first, one moment for the episode, at its clock time."""
  import datetime  # pylint: disable=g-import-not-at-top
  from sleepjax import api  # pylint: disable=g-import-not-at-top
  model = api.load(workdir)
  text = "oxygen desaturation"
  t = model.embed_text([text])[0]
  rng = np.random.default_rng(0)
  E = 90
  signal = rng.normal(size=(E, t.size))
  signal -= (signal @ t)[:, None] * t[None]  # orthogonal to the text
  signal[40:42] = t + 0.3 * rng.normal(size=(2, t.size)) / np.sqrt(t.size)
  present = np.ones((E, 1), bool)
  present[10] = False
  night = api.Night(epoch=signal, night=signal.mean(0), present=present, channel_mask={},
                    modalities=("eeg",), signal=signal,
                    start=datetime.datetime(2026, 1, 1, 23, 0, 0))
  found = model.search(night, text, k=3)
  assert set(np.argsort(-np.nan_to_num(found.similarity, nan=-2))[:2]) == {40, 41}
  first = found.moments[0]
  assert first.epoch in (40, 41) and first.clock == (
      datetime.datetime(2026, 1, 1, 23, 0, 0)
      + datetime.timedelta(seconds=30 * first.epoch)).strftime("%H:%M:%S")
  assert all(m.epoch not in (40, 41) for m in found.moments[1:])
  assert np.isnan(found.similarity[10])


def test_query_cli_prints_moments_and_writes_a_png(workdir, capsys):
  from sleepjax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sleepjax", "query", f"--workdir={workdir}", "--text=oxygen desaturation",
              "--top_k=3"])
  assert not exit_info.value.code
  out = capsys.readouterr().out
  assert "top moments" in out and out.count(" similarity ") == 3
  png = out.strip().splitlines()[-1].removeprefix("figure: ")
  assert open(png, "rb").read(4) == b"\x89PNG"


def test_search_task_aurocs(workdir):
  """The `search` eval task: an AUROC per stage and event kind the test split has both of, for
  the prompt and its paraphrases, pretrained and random init."""
  from sleepjax.evaluate import search  # pylint: disable=g-import-not-at-top
  config = _config()
  config.eval.tasks = ("search",)
  t = run.evaluate(config, str(workdir))["tasks"]["search"]
  for enc in ("pretrained", "random_init"):
    assert set(t[enc]["prompt"]) >= {"W", "N2"} and set(t[enc]["prompt"]) <= set(search.PROMPTS)
    assert all(0 <= v <= 1 for v in t[enc]["prompt"].values())
    assert any(k.startswith("N2/") for k in t[enc]["paraphrase"])
  assert t["prompts"] == search.PROMPTS
