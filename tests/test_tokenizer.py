"""SentencePiece caption tokenizer: deterministic training, split digits, exact round trips, padding."""

import pickle

import numpy as np
import pytest

from sleepjax import caption_tokenizer as T

CORPUS = [
    "Stage N2 sleep. Heart rate 61 bpm on average, ranging from 55 to 66 bpm.",
    "REM sleep. 3 rapid eye movements; slow eye-movement power 120 uV^2.",
    "SpO2 averages 95.7 % with a minimum of 93 % and 1 desaturation.",
    "Breathing rate 15 breaths/min from airflow and 14 breaths/min from effort.",
    "Chin EMG 3.2 uV RMS, median frequency 28 Hz, 0 bursts. Lying on the back.",
    "Total sleep time 412 min of 480 min in bed, sleep efficiency 85.8 %.",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return T.CaptionTokenizer(T.train_tokenizer(iter(CORPUS), tmp_path_factory.mktemp("tok") / "m",
                                       vocab_size=400))


def test_training_is_deterministic(tmp_path):
  a = T.train_tokenizer(CORPUS, tmp_path / "a", vocab_size=400)
  first = open(a, "rb").read()
  assert T.train_tokenizer(iter(CORPUS), tmp_path / "a", vocab_size=400) == a
  assert open(a, "rb").read() == first  # byte-identical model
  b = T.train_tokenizer(list(CORPUS), tmp_path / "sub" / "b", vocab_size=400)
  ta, tb = T.CaptionTokenizer(a), T.CaptionTokenizer(b)  # elsewhere: same pieces and scores
  pieces = lambda t: [(t._sp.id_to_piece(i), t._sp.get_score(i)) for i in range(t.vocab_size)]  # noqa: E731,SLF001
  assert pieces(ta) == pieces(tb)


def test_digits_split_and_special_ids(tok):
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert 256 < tok.vocab_size <= 400
  pieces = tok.pieces("12345 bpm")
  assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4", "5"] or \
      [p.lstrip("\u2581") for p in pieces if any(c.isdigit() for c in p)] == list("12345")


@pytest.mark.parametrize("text", [c for c in CORPUS[:6]] + [
    "", "Unseen words: Ünïcode µV ✓ 9876.5 %", "  leading and  double  spaces ", "tab\tend"])
def test_round_trip_any_text(tok, text):
  ids, mask = tok.encode([text], max_len=128)
  assert tok.decode(ids[0]) == text
  assert ids[0, 0] == T.BOS_ID and ids[0, mask[0].sum() - 1] == T.EOS_ID
  assert (ids[0, ~mask[0]] == T.PAD_ID).all() and mask[0][: mask[0].sum()].all()


def test_encode_batch_shapes_padding_truncation(tok):
  ids, mask = tok.encode(CORPUS[:3], max_len=64)
  assert ids.shape == mask.shape == (3, 64) and ids.dtype == np.int32 and mask.dtype == bool
  assert tok.decode(ids) == CORPUS[:3]
  single, _ = tok.encode(CORPUS[0], max_len=64)
  np.testing.assert_array_equal(single[0], ids[0])
  short, smask = tok.encode(CORPUS[0], max_len=8)
  assert smask.all() and short[0, 0] == T.BOS_ID and T.EOS_ID not in short[0]
  assert CORPUS[0].startswith(tok.decode(short[0]))
  with pytest.raises(ValueError):
    tok.encode("x", max_len=1)


def test_pickles_for_the_input_pipeline(tok):
  clone = pickle.loads(pickle.dumps(tok))
  a, _ = tok.encode(CORPUS[:4], 48)
  b, _ = clone.encode(CORPUS[:4], 48)
  np.testing.assert_array_equal(a, b)
