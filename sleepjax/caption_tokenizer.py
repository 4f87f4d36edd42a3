"""SentencePiece caption tokenizer: training (offline, beside the shards) and the input-pipeline side.

Ids: 0 = pad, 1 = unk, 2 = BOS, 3 = EOS. Digits are split one by one (`split_digits`), so numbers
are spelled digit by digit and the model never meets an unseen number token. Text is not
normalised (identity rule, whitespace kept) and characters outside the vocabulary fall back to
UTF-8 byte pieces, so `decode(encode(text)) == text` for any text. Training is deterministic: fixed
sentence sampling seed, one thread, input order preserved.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
DEFAULT_VOCAB_SIZE = 1024


def train_tokenizer(texts: Iterable[str], model_prefix: str | os.PathLike,
                    vocab_size: int = DEFAULT_VOCAB_SIZE, *, model_type: str = "unigram",
                    max_sentences: int = 2_000_000, seed: int = 0) -> str:
  """Trains a SentencePiece model on `texts`; returns the path of `<model_prefix>.model`.

  `vocab_size` is an upper bound (a small corpus yields fewer pieces rather than an error); it
  includes the 4 special and 256 byte-fallback pieces. At most `max_sentences` sentences are
  used (a seeded sample when the corpus is larger). Empty strings are skipped.
  """
  prefix = pathlib.Path(model_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  sentences = (t for t in texts if t)
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences, model_prefix=str(prefix), vocab_size=vocab_size,
      model_type=model_type, split_digits=True, byte_fallback=True, character_coverage=1.0,
      hard_vocab_limit=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=1,
      max_sentence_length=1 << 14, minloglevel=2)
  return str(prefix) + ".model"


class CaptionTokenizer:
  """A trained SentencePiece model for the input pipeline (picklable: carries the model bytes)."""

  def __init__(self, model: str | os.PathLike | bytes):
    self._proto = model if isinstance(model, bytes) else pathlib.Path(model).read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    assert (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()) == (PAD_ID, BOS_ID, EOS_ID), \
        "tokenizer must be trained by sleepjax.caption_tokenizer.train_tokenizer"

  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

  def pieces(self, text: str) -> list[str]:
    return self._sp.encode(text, out_type=str)

  def encode(self, texts: str | Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, max_len], mask bool [N, max_len]): BOS, pieces, EOS, then pad (id 0).

    A caption longer than max_len - 2 pieces is cut at max_len tokens and has no EOS (BOS and the
    first pieces kept), so a decoder can tell truncated text from complete text.
    """
    if isinstance(texts, str):
      texts = [texts]
    if max_len < 2:
      raise ValueError(f"max_len must be >= 2 (BOS + EOS), got {max_len}")
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    for i, seq in enumerate(self._sp.encode(list(texts), out_type=int)):
      seq = [BOS_ID, *seq, EOS_ID][:max_len]
      ids[i, :len(seq)] = seq
    return ids, ids != PAD_ID

  def decode(self, ids) -> str | list[str]:
    """Text of one id sequence ([L]) or of each row ([N, L]); stops at EOS, skips BOS and pad."""
    arr = np.asarray(ids)
    if arr.ndim == 2:
      return [self.decode(row) for row in arr]
    out = []
    for t in arr.tolist():
      if t == EOS_ID:
        break
      if t not in (PAD_ID, BOS_ID):
        # the model's vocabulary (text.vocab_size) only bounds the pieces: an id past them (an
        # undertrained model emits some) has no text and reads as unknown
        out.append(int(t) if t < self.vocab_size else UNK_ID)
    return self._sp.decode(out)
