"""`sleepjax eval` on a tiny SleepLM checkpoint: text retrieval, zero-shot staging and captioning
rows from the checkpoint alone, aligned with the right reference captions."""

import json
import shutil

import numpy as np
import pytest

from sleepjax.config_tools import load_config
from sleepjax.evaluate import embed, run, sleeplm
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
