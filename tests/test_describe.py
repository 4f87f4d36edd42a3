"""`Model.describe`: a night in sentences whose every number is the model's own output (its
zero-shot stages, its search similarities) or the night's annotations, recomputed here from
those sources without the describe code."""

import re

import numpy as np
import pytest

from sleepjax import api, query
from sleepjax.evaluate import search
from sleepjax.modalities import EPOCH_SECONDS, EVENTS, STAGES

# A stated number: a clock time, or a decimal not inside a word (the stage names N1-N3 are words).
NUMBER = re.compile(r"(?<![\w.:+])(\+?\d{2}:\d{2}:\d{2}|\d+(?:\.\d+)?)(?![\w:])")


@pytest.fixture(scope="module")
def described(sleeplm_trained):
  workdir = sleeplm_trained[0]
  model = api.load(workdir)
  _, night = query.prepared_night(model, str(workdir), None)
  return model, night, model.describe(night, k=2)


def _recomputed(model, night, stated_epochs: dict) -> tuple[dict, np.ndarray]:
  """(name -> value from the sources, the zero-shot stages): zero-shot stages from the text
  tower's own stage prompts, cosines from its prompt embeddings, the shards' stages and event
  raster. The moments are checked to be the top ones here (not by their order: near-ties of
  a tiny model); their values are recomputed at the epochs the text states."""
  from data_prep.captions import STAGE_TEMPLATES  # pylint: disable=g-import-not-at-top
  present = night.present.any(1)
  unit = night.signal / np.linalg.norm(night.signal, axis=-1, keepdims=True)
  rows = np.stack([model.embed_text(STAGE_TEMPLATES[k]).mean(0) for k in range(len(STAGES))])
  rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
  stages = np.where(present, (unit @ rows.T).argmax(-1), -1)
  sleep = stages > 0
  n = present.sum()
  out = {"signal_min": n / 2, "signal_epochs": n}
  if sleep.any():
    first = np.flatnonzero(sleep)[0]
    out.update(sleep_min=sleep.sum() / 2, sleep_efficiency_pct=100 * sleep.sum() / n,
               sleep_onset_min=present[:first].sum() / 2, sleep_onset_clock=first * EPOCH_SECONDS)
  out.update({f"{s}_min": (stages == k).sum() / 2 for k, s in enumerate(STAGES)})
  ok = present & (night.stages >= 0)
  out.update(scored_sleep_min=(night.stages[ok] > 0).sum() / 2,
             agreement_pct=100 * (stages[ok] == night.stages[ok]).mean())
  for kind in EVENTS:
    sim = np.where(present, unit @ model.embed_text([search.PROMPTS[kind]])[0], np.nan)
    top = stated_epochs[kind]
    for i, e in enumerate(top):  # each is the most similar epoch not beside a higher one
      away = np.array([all(abs(j - p) > 1 for p in top[:i]) for j in range(len(sim))])
      assert sim[e] >= np.nanmax(np.where(away, sim, np.nan)) - 1e-5, (kind, i)
      out[f"{kind}_top{i + 1}_clock"] = e * EPOCH_SECONDS
      out[f"{kind}_top{i + 1}_similarity"] = sim[e]
    annotated = ((night.events.astype(int) >> EVENTS.index(kind)) & 1).any(-1) & present
    out[f"{kind}_top_annotated"] = sum(annotated[e] for e in top)
    out[f"{kind}_annotated_epochs"] = annotated.sum()
  return out, stages


def test_every_stated_number_is_recomputed_from_its_source(described):
  model, night, d = described
  expected, stages = _recomputed(model, night, {
      k: [m.epoch for m in found.moments] for k, found in d.searches.items()})
  np.testing.assert_array_equal(d.stages, stages)
  assert set(d.numbers) == set(expected)
  for name, number in d.numbers.items():
    assert number.text in d.sentences[number.sentence] and number.source, name
    if ":" in number.text:  # a clock time: the epoch's offset, written as search writes it
      assert number.value == expected[name] and number.text == search.clock(number.value)
    else:  # the stated value is the recomputed one at the text's precision
      decimals = len(number.text.partition(".")[2])
      assert float(number.text) == number.value
      assert abs(number.value - expected[name]) <= 0.5 * 10 ** -decimals + 1e-6, name
  for i, sentence in enumerate(d.sentences):  # no number in the text that is not one of these
    assert sorted(NUMBER.findall(sentence)) == sorted(
        n.text for n in d.numbers.values() if n.sentence == i), sentence


def test_describe_names_each_stage_and_event(described):
  _, _, d = described
  assert "sleep efficiency" in d.text or "no epoch as sleep" in d.text
  assert all(f"{s} " in d.sentences[2] for s in STAGES)
  assert [k for k in d.searches] == list(EVENTS)
  assert all(f'"{search.PROMPTS[k]}"' in d.text for k in EVENTS)


def test_query_cli_describes(sleeplm_trained, capsys):
  from sleepjax import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sleepjax", "query", f"--workdir={sleeplm_trained[0]}", "--describe", "--top_k=2"])
  assert not exit_info.value.code
  out = capsys.readouterr().out
  assert "min of signal" in out and "stages: zero_shot" in out and "Asked for" in out
