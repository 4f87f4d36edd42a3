"""Multilevel captions: every stated number equals its feature at the printed precision, wording is
seeded, absent channels say nothing, and captions survive the SentencePiece tokenizer."""

import re

import numpy as np
import pytest

from data_prep import captions as C
from data_prep import features as F
from tests.test_features import synthetic_night

I = F.INDEX
# A standalone number: not glued to letters ("C4-M1", "N2", "SpO2") nor an exponent ("uV^2").
NUMBER = re.compile(r"(?<![\w.^])-?\d+(?:\.\d+)?(?![\w^])")
# Words that must appear in the sentence stating a feature (checks numbers land in the right place).
KEYWORDS = [
    (r"^eeg_.*_(spindles)$", r"spindle"), (r"^eeg_.*_(slow_waves)$", r"slow wave"),
    (r"^eog_rems$", r"rapid eye movement"), (r"^eog_", r"EOG|[Ee]ye"),
    (r"^emg_", r"EMG|muscle"), (r"^hr_rmssd$", r"RMSSD"), (r"^hr_", r"[Hh]eart"),
    (r"^spo2_desats$", r"desaturation"), (r"^spo2_", r"SpO2|[Oo]xygen saturation"),
    (r"_rate$", r"[Bb]reath|[Rr]espiratory"), (r"_ibi_cv$", r"[Bb]reath"),
    (r"^flow_flatness$", r"flattening|shape index"),
    (r"^apnea_", r"apnea"), (r"^hypopnea_", r"hypopnea"), (r"^desaturation_", r"desaturation"),
    (r"^arousal_", r"arousal"), (r"^limb_movement_", r"limb movement"),
    (r"^(tst|tib)_min$", r"min"), (r"^efficiency_pct$", r"efficiency"),
    (r"^sleep_latency_min$", r"[Ss]leep (onset )?latency|[Ff]ell asleep"),
    (r"^waso_min$", r"WASO|awake after sleep onset|wake after sleep onset"),
    (r"^ahi$", r"AHI|[Aa]pnea-hypopnea"), (r"^odi$", r"ODI|desaturation index"),
]


def _check_numbers(cap: C.Caption, value_of):
  """Every number in the text is one provenance entry, in order, equal to value * scale."""
  found = NUMBER.findall(cap.text)
  assert found == [p for _, _, p in cap.numbers], cap.text
  for name, scale, printed in cap.numbers:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    expect = value_of(name) * scale
    assert np.isfinite(expect), (name, cap.text)
    assert abs(float(printed) - expect) <= 0.5 * 10.0 ** -decimals + 1e-6, (name, printed, expect)
    pattern = next((kw for rx, kw in KEYWORDS if re.search(rx, name)), None)
    if pattern is not None:
      assert any(printed in s and re.search(pattern, s, re.I) for s in cap.statements), (name, cap.text)
    band = re.match(r"^eeg_(.*)_(delta|theta|alpha|sigma|beta)$", name)
    if band:  # the band's own number stands next to its name
      b = band.group(2)
      assert any(re.search(rf"{b} {printed} %|{printed} % {b}", s) for s in cap.statements), name


def _features():
  return synthetic_night()[-1]


def test_every_number_equals_its_feature():
  f = _features()
  assert len(C.GROUPS) == 5
  n_numbers = 0
  for i, row in enumerate(f):
    caps = C.render_epoch(row, i, seed=0)
    assert tuple(caps) == C.GROUPS
    for cap in caps.values():
      assert not re.search(r"\b(nan|inf)\b", cap.text, re.I), cap.text
      assert cap.text == cap.text.strip() and "  " not in cap.text
      _check_numbers(cap, lambda name, row=row: float(row[I[name]]))
      n_numbers += len(cap.numbers)
  assert n_numbers > 20 * len(f)  # captions are not trivially empty
  texts = C.epoch_captions(f, seed=0)
  assert texts[0] == {g: c.text for g, c in C.render_epoch(f[0], 0, 0).items()}


def test_stage_and_event_wording():
  row = np.full(len(F.FEATURE_NAMES), np.nan, np.float32)
  row[I["stage"]] = 3
  for k in F.EVENTS:
    row[I[f"{k}_count"]] = 0
  row[I["apnea_count"]], row[I["apnea_onset_s"]], row[I["apnea_offset_s"]] = 1, 12.4, 30.0
  row[I["arousal_count"]], row[I["arousal_onset_s"]], row[I["arousal_offset_s"]] = 2, 0.0, 21.6
  for seed in range(6):
    cap = C.render_epoch(row, 7, seed)["stage_event"]
    assert "N3" in cap.text and "apnea" in cap.text.lower() and "arousals" in cap.text
    assert "hypopnea" not in cap.text and "limb" not in cap.text
    _check_numbers(cap, lambda name: float(row[I[name]]))
  row[I["stage"]] = np.nan
  row[I["apnea_count"]] = row[I["arousal_count"]] = 0
  assert C.render_epoch(row, 0, 0)["stage_event"].text == ""


def test_same_seed_same_text_other_seed_other_wording():
  f = _features()
  a, b, c = (C.epoch_captions(f, seed=s) for s in (0, 0, 1))
  assert a == b
  assert a != c
  changed = {g for x, y in zip(a, c) for g in C.GROUPS if x[g] != y[g]}
  assert changed == set(C.GROUPS)
  # Rewording never changes the facts: the same numbers in the same order.
  for i, row in enumerate(f[:10]):
    for g in C.GROUPS:
      nums = [sorted(p for _, _, p in C.render_epoch(row, i, s)[g].numbers) for s in (0, 1)]
      assert nums[0] == nums[1]


def test_absent_channel_produces_no_statement():
  f = _features().copy()
  cardiac = [I[k] for k in ("hr_mean", "hr_min", "hr_max", "hr_trend", "hr_rmssd")]
  f[:, cardiac] = np.nan
  f[:, [I[k] for k in F.FEATURE_NAMES if k.startswith("eeg_c4_m1")]] = np.nan
  f[:, [I[k] for k in ("spo2_mean", "spo2_min", "spo2_desats")]] = np.nan
  f[:, I["position"]] = np.nan
  for cap in C.epoch_captions(f, seed=3):
    assert cap["cardiac"] == ""
    assert "C4-M1" not in cap["brain"] and "C3-M2" in cap["brain"]
    assert "SpO2" not in cap["respiratory"] and "xygen" not in cap["respiratory"]
    assert not re.search(r"[Pp]osition|[Ll]ying", cap["somatic"])
  f[:] = np.nan
  assert all(c == {g: "" for g in C.GROUPS} for c in C.epoch_captions(f, seed=0))


def test_night_caption_numbers():
  sig, mask, st, ev, pos, f = synthetic_night()
  del sig, mask, pos
  s = F.night_summary(f, st, ev)
  texts = set()
  for seed in range(8):
    cap = C.render_night(s, seed)
    assert cap.text == C.night_caption(s, seed)
    _check_numbers(cap, lambda name: s[name])
    names = {n for n, _, _ in cap.numbers}
    assert {"tst_min", "efficiency_pct", "n1_pct", "n2_pct", "n3_pct", "rem_pct", "ahi",
            "odi"} <= names
    texts.add(cap.text)
  assert len(texts) > 1
  assert "AHI" not in C.night_caption({**s, "ahi": float("nan")}, 0).replace("ODI", "")


def test_captions_round_trip_through_tokenizer(tmp_path):
  from sleepjax import caption_tokenizer as T  # pylint: disable=g-import-not-at-top
  f = _features()
  train = [c for d in C.epoch_captions(f, seed=0) for c in d.values()]
  held_out = [c for d in C.epoch_captions(f, seed=1) for c in d.values() if c]
  st, ev = synthetic_night()[2:4]
  night = C.night_caption(F.night_summary(f, st, ev), 5)
  tok = T.CaptionTokenizer(T.train_tokenizer(train, tmp_path / "captions", vocab_size=512))
  texts = held_out + [night]
  ids, mask = tok.encode(texts, max_len=256)
  assert mask.sum(1).max() < 256  # nothing truncated
  assert tok.decode(ids) == texts
  for text in texts[:50]:
    for piece in tok.pieces(text):
      assert sum(ch.isdigit() for ch in piece) <= 1, piece  # digits split one by one


def test_number_check_catches_mistakes():
  row = _features()[40]
  good = C.render_epoch(row, 40, 0)["cardiac"]
  value_of = lambda name: float(row[I[name]])  # noqa: E731
  _check_numbers(good, value_of)
  off_by_one = C.Caption(good.text, [(n, s, p) for n, s, p in good.numbers], good.statements)
  name, scale, printed = off_by_one.numbers[0]
  off_by_one.numbers[0] = (name, scale, str(int(float(printed)) + 1))
  off_by_one.text = good.text.replace(printed, off_by_one.numbers[0][2], 1)
  with pytest.raises(AssertionError):
    _check_numbers(off_by_one, value_of)
  swapped = C.Caption(good.text, [(("hr_rmssd",) + p[1:]) if p[0] == "hr_mean" else p
                                  for p in good.numbers], good.statements)
  with pytest.raises(AssertionError):
    _check_numbers(swapped, value_of)
  extra = C.Caption(good.text + " 5 more.", good.numbers, good.statements)
  with pytest.raises(AssertionError):
    _check_numbers(extra, value_of)


def test_stated_numbers_reads_every_paraphrase_back():
  f = _features()
  seen = set()
  for seed in range(3):  # other seeds choose other paraphrases
    for i, row in enumerate(f):
      for g, cap in C.render_epoch(row, i, seed).items():
        got = C.stated_numbers(cap.text, row, g)
        want = [(n, float(p)) for n, _, p in cap.numbers]
        assert want == [(n, v) for n, v, _, _ in got], cap.text
        for (name, scale, printed), (_, value, truth, decimals) in zip(cap.numbers, got):
          assert truth == pytest.approx(float(row[I[name]]) * scale)
          assert decimals == (len(printed.split(".")[1]) if "." in printed else 0)
        seen |= set(cap.statements)
  assert len(seen) > 100  # many paraphrases, not one template per statement


def test_stated_numbers_pairs_a_wrong_number_with_its_quantity():
  f = _features()
  i = next(i for i, row in enumerate(f) if np.isfinite(row[I["hr_mean"]]))
  row = f[i]
  mean = round(float(row[I["hr_mean"]]))
  lo, hi = round(float(row[I["hr_min"]])), round(float(row[I["hr_max"]]))
  text = f"Mean heart rate {mean + 7} bpm (minimum {lo}, maximum {hi} bpm). RMSSD 3 ms."
  got = {n: (v, t) for n, v, t, _ in C.stated_numbers(text, row, "cardiac")}
  assert got["hr_mean"][0] == mean + 7 and abs(got["hr_mean"][1] - (mean + 7)) > 6
  assert got["hr_min"][0] == lo and got["hr_max"][0] == hi
  # an event the epoch does not have, or another group's sentence, is not read as a stated number
  calm = next(r for r in f if r[I["apnea_count"]] == 0)
  assert C.stated_numbers("Apnea from 3 s to 9 s.", calm, "stage_event") == []
  apnea = calm.copy()
  apnea[[I["apnea_count"], I["apnea_onset_s"], I["apnea_offset_s"]]] = 1, 3.2, 8.9
  assert [(n, v) for n, v, _, _ in C.stated_numbers("Apnea from 3 s to 9 s.", apnea, "stage_event")
          ] == [("apnea_onset_s", 3.0), ("apnea_offset_s", 9.0)]
  assert C.stated_numbers(text, row, "somatic") == []


def test_content_is_the_wording_free_caption():
  f = _features()
  i = next(i for i, row in enumerate(f) if np.isfinite(row[I["hr_mean"]]))
  row = f[i]
  for g in C.GROUPS:
    caps = [C.render_epoch(row, i, seed)[g] for seed in range(8)]
    assert len({c.text for c in caps}) > 1  # other seeds, other words: one content
    said = C.content(row, g)  # states the numbers every caption states, as the captions do
    assert sorted((n, v) for n, v, _, _ in C.stated_numbers(said, row, g)) == sorted(
        (n, float(p)) for n, _, p in caps[0].numbers)
  other = row.copy()
  other[I["hr_mean"]] += 3
  assert C.content(other, "cardiac") != C.content(row, "cardiac")
  assert C.content(other, "brain") == C.content(row, "brain")
