"""Bad transcript files: encodings other than UTF-8, and text that is not in the LibriSpeech form."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.corpus import normalize_transcript, read_split
from asr.data.datamodule import AsrDataModule
from asr.data.errors import DataError
from asr.data.validate import validate_corpus

LOGGER = "asr.data.corpus"


def write_chapter(root: Path, lines: list[str] | bytes, split: str = "train", speaker: str = "19",
                  chapter: str = "198") -> Path:
    """A chapter in the LibriSpeech layout with one short audio file per line; returns its transcript file.
    ``lines`` are ``UTT TEXT`` lines, or the transcript file's raw bytes."""
    chapter_dir = root / split / speaker / chapter
    chapter_dir.mkdir(parents=True)
    trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
    raw = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    trans.write_bytes(raw)
    rng = np.random.default_rng(0)
    for line in raw.splitlines():
        if line.strip():
            utt_id = line.split()[0].removeprefix(b"\xef\xbb\xbf").decode("ascii")
            sf.write(str(chapter_dir / f"{utt_id}.flac"), rng.uniform(-0.1, 0.1, 1600), 16000)
    return trans


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- encodings ----------------------------------------------------------------------------------


def test_latin1_transcript_names_file_line_and_fix(tmp_path):
    trans = write_chapter(tmp_path, "19-198-0000 THE OLD MAN\n19-198-0001 A CAF\xc9 IN TOWN\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert message.startswith(f"{trans}:2: byte 0xc9 (byte 18 of the line) is not UTF-8")
    assert "re-encode the file as UTF-8" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no UnicodeDecodeError traceback
    with pytest.raises(DataError, match=re.escape(f"{trans}:2: byte 0xc9")):
        validate_corpus(tmp_path, decode=False)


def test_utf8_with_byte_order_mark_and_crlf_is_read(tmp_path):
    write_chapter(tmp_path, b"\xef\xbb\xbf19-198-0000 THE OLD MAN\r\n19-198-0001 CAF\xc3\x89 OLE\r\n")
    assert [(u.utt_id, u.transcript) for u in read_split(tmp_path, "train")] == [
        ("19-198-0000", "THE OLD MAN"), ("19-198-0001", "CAF\u00c9 OLE")]


# -- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize(("written", "normalized"), [
    ("THE OLD MAN'S HOUSE", "THE OLD MAN'S HOUSE"),  # LibriSpeech form: unchanged
    ("'TIS O'ER THE HILL", "'TIS O'ER THE HILL"),
    ("Hello, world!", "HELLO WORLD"),
    ("\u201cDon\u2019t,\u201d she said\u2014quietly.", "DON'T SHE SAID QUIETLY"),
    ("a well-known (old) man; yes: no?", "A WELL KNOWN OLD MAN YES NO"),
    ("he said ' no ' then 'yes'", "HE SAID NO THEN 'YES'"),
    ("chapter 12.", "CHAPTER 12"),
    ("caf\u0065\u0301 au lait", "CAF\u00c9 AU LAIT"),
    ("tab\tand\x0cform feed", "TAB AND FORM FEED"),
    ("... -- !", ""),
])
def test_normalize_transcript(written, normalized):
    assert normalize_transcript(written) == normalized
    assert normalize_transcript(normalized) == normalized



def test_normalize_transcript_fast_path_agrees_with_the_full_one():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        text = "".join(rng.choice(list("AB1' "), rng.integers(1, 10)))
        assert normalize_transcript(text) == normalize_transcript(text + ","), repr(text)  # "," forces the full path

def test_lower_case_and_punctuation_normalized_with_one_warning_per_file(tmp_path, caplog):
    trans = write_chapter(tmp_path, ["19-198-0000 the old man, at last.", "19-198-0001 HER SISTER SAW IT",
                                     "19-198-0002 \u201cMy father!\u201d"])
    clean = write_chapter(tmp_path, ["19-199-0000 A FINE DAY"], chapter="199")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        utts = read_split(tmp_path, "train")
        assert read_split(tmp_path, "train") == utts  # read again: no second warning
    assert [u.transcript for u in utts] == ["THE OLD MAN AT LAST", "HER SISTER SAW IT", "MY FATHER", "A FINE DAY"]
    (message,) = warnings_of(caplog)
    assert message.startswith(f"{trans}: 2 of 3 transcript lines normalized to the LibriSpeech form")
    assert "line 1 'the old man, at last.' -> 'THE OLD MAN AT LAST'" in message
    assert str(clean) not in message and "\n" not in message


def test_edited_file_warns_again(tmp_path, caplog):
    trans = write_chapter(tmp_path, ["19-198-0000 hello there"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        read_split(tmp_path, "train")
        trans.write_text("19-198-0000 hello, there!\n")
        read_split(tmp_path, "train")
    assert len(warnings_of(caplog)) == 2


def test_corpus_in_librispeech_form_gives_no_warning(tiny_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for split in ("train", "dev", "test"):
            read_split(tiny_corpus, split)
    assert warnings_of(caplog) == []


def test_transcript_empty_once_normalized_is_refused(tmp_path):
    trans = write_chapter(tmp_path, ["19-198-0000 THE OLD MAN", "19-198-0001 ... -- !"])
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert message.startswith(f"{trans}:2: transcript '... -- !' of utterance '19-198-0001' has no letters or digits")
    assert "remove the line and its audio file" in message


def test_tokenizer_and_wer_references_see_the_normalized_text(tiny_corpus, corpus_copy, tmp_path, caplog):
    """A copy of the tiny corpus written in lower case with punctuation trains the same tokenizer text and
    gives the same reference transcripts as the original."""
    for trans in corpus_copy.rglob("*.trans.txt"):
        lines = [line.split(" ", 1) for line in trans.read_text().splitlines()]
        trans.write_text("".join(f"{utt} {text.lower().replace(' ', ', ', 1)}!\n" for utt, text in lines))
    clean = {s: {u.utt_id: u.transcript for u in read_split(tiny_corpus, s)} for s in ("train", "dev", "test")}
    dm = AsrDataModule(root=str(corpus_copy), train_split="train", dev_splits=["dev"], test_splits=["test"],
                       cache_dir=str(tmp_path / "features"), tokenizer={"dir": str(tmp_path / "tok"), "vocab_size": 60},
                       batch_size=4, eval_batch_size=8, feature_jobs=1, progress=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.prepare_data()
        dm.setup("fit")
    assert len(warnings_of(caplog)) == len(list(corpus_copy.rglob("*.trans.txt")))  # one per file
    pieces = [dm.tokenizer.sp.id_to_piece(i) for i in range(4, dm.tokenizer.vocab_size)]
    assert all(re.fullmatch(r"[\u2581a-z']+", p) for p in pieces), [p for p in pieces if re.search(r"[,!]", p)]
    for split in ("train", "dev", "test"):
        dataset = dm.datasets[split]
        assert {u.utt_id: u.transcript for u in dataset.utterances} == clean[split]
        assert [dm.tokenizer.decode(t.tolist()) for t in dataset.tokens] == [u.transcript for u in dataset.utterances]
    references = [t for batch in dm.val_dataloader()[0] for t in batch["transcripts"]]  # what WER is scored against
    assert sorted(references) == sorted(clean["dev"].values())
