"""BPE tokenizer: trained on the training transcripts, reused while they do not change."""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm

from asr.data.corpus import read_split
from asr.data.errors import DataError
from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer


@pytest.fixture(scope="module")
def train_texts(tiny_corpus) -> list[str]:
    return [u.transcript for u in read_split(tiny_corpus, "train")]


@pytest.fixture(scope="module")
def tokenizer(train_texts, tmp_path_factory) -> Tokenizer:
    return Tokenizer.train_or_load(train_texts, tmp_path_factory.mktemp("tok"), vocab_size=60)


def test_round_trip_of_training_transcripts(tokenizer, train_texts):
    assert tokenizer.vocab_size == 60
    for text in train_texts:
        ids = tokenizer.encode(text)
        assert ids and all(UNK_ID < i < 60 and i not in (BOS_ID, EOS_ID) for i in ids)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text  # special ids dropped
    assert len(tokenizer.encode(train_texts[0])) < len(train_texts[0].replace(" ", ""))  # merges, not letters


def test_special_ids(tokenizer):
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert UNK_ID in tokenizer.encode("ZQX")  # letters never seen in training


def test_same_text_reuses_the_model(train_texts, tmp_path, monkeypatch):
    first = Tokenizer.train_or_load(train_texts, tmp_path, vocab_size=50)
    stamp = first.model_path.stat().st_mtime_ns
    meta = json.loads((tmp_path / "bpe50.json").read_text())
    assert meta["vocab_size"] == 50 and meta["sentences"] == len(train_texts)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the text did not change")
    monkeypatch.setattr(spm.SentencePieceTrainer, "train", no_training)
    again = Tokenizer.train_or_load(list(train_texts), tmp_path, vocab_size=50)
    assert again.model_path == first.model_path and again.model_path.stat().st_mtime_ns == stamp
    assert again.encode(train_texts[3]) == first.encode(train_texts[3])


def test_changed_text_or_size_retrains(train_texts, tmp_path):
    first = Tokenizer.train_or_load(train_texts, tmp_path, vocab_size=50)
    model_bytes = first.model_path.read_bytes()
    sha = json.loads((tmp_path / "bpe50.json").read_text())["text_sha1"]
    changed = [*train_texts[:-1], "A COMPLETELY DIFFERENT SENTENCE ABOUT ZEBRAS"]
    second = Tokenizer.train_or_load(changed, tmp_path, vocab_size=50)
    assert second.model_path == first.model_path
    assert json.loads((tmp_path / "bpe50.json").read_text())["text_sha1"] != sha
    assert second.model_path.read_bytes() != model_bytes
    assert second.decode(second.encode("ZEBRAS")) == "ZEBRAS"
    other_size = Tokenizer.train_or_load(changed, tmp_path, vocab_size=40)
    assert other_size.model_path.name == "bpe40.model" and other_size.vocab_size == 40
    assert not list(tmp_path.glob("*.tmp"))


def test_vocab_size_too_large_names_the_key_and_the_limit(train_texts, tmp_path):
    with pytest.raises(DataError) as info:
        Tokenizer.train_or_load(train_texts, tmp_path, vocab_size=5000)
    message = str(info.value)
    assert "data.tokenizer.vocab_size=5000 is too large" in message
    limit = int(re.search(r"at most (\d+) pieces fit", message).group(1))
    assert 60 <= limit < 5000
    assert f"set data.tokenizer.vocab_size to {limit} or less" in message
    assert Tokenizer.train_or_load(train_texts, tmp_path, vocab_size=limit).vocab_size == limit  # the limit fits
    assert not (tmp_path / "bpe5000.model").exists()
    with pytest.raises(DataError, match="my.key=5000"):
        Tokenizer.train_or_load(train_texts, tmp_path, vocab_size=5000, config_key="my.key")


def test_missing_model_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"tokenizer model {tmp_path / 'bpe9.model'} not found")):
        Tokenizer(tmp_path / "bpe9.model")
