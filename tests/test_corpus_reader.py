"""Reading a LibriSpeech-layout corpus: what it returns, and the DataError for each kind of bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.corpus import check_root, list_splits, read_split, split_dirs
from asr.data.errors import DataError
from asr.data.validate import validate_corpus


def first_chapter(root: Path, split: str = "dev") -> tuple[Path, Path]:
    """(chapter directory, its transcript file) of the first chapter of ``split``."""
    trans = sorted((root / split).glob("*/*/*.trans.txt"))[0]
    return trans.parent, trans


def test_read_split_returns_sorted_utterances_matching_the_files(tiny_corpus):
    utts = read_split(tiny_corpus, "train")
    assert len(utts) == 24
    assert [u.utt_id for u in utts] == sorted(u.utt_id for u in utts)
    for u in utts:
        assert u.audio_path == tiny_corpus / "train" / u.speaker / u.chapter / f"{u.utt_id}.flac"
        assert u.audio_path.is_file() and u.utt_id.startswith(f"{u.speaker}-{u.chapter}-")
        assert re.fullmatch(r"[A-Z' ]+", u.transcript)
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1]
             for t in (tiny_corpus / "train").glob("*/*/*.trans.txt") for line in t.read_text().splitlines()}
    assert {u.utt_id: u.transcript for u in utts} == lines


def test_list_splits_ignores_directories_without_transcripts(corpus_copy):
    (corpus_copy / "tokenizer").mkdir()
    (corpus_copy / "tokenizer" / "bpe60.model").write_bytes(b"x")
    assert list_splits(corpus_copy) == ["dev", "test", "train"]



def test_split_dirs_counts_empty_splits_but_not_the_tokenizer_or_other_files(corpus_copy):
    (corpus_copy / "tokenizer").mkdir()
    (corpus_copy / "tokenizer" / "bpe60.model").write_bytes(b"x")
    (corpus_copy / "cache" / "sub").mkdir(parents=True)
    (corpus_copy / "cache" / "sub" / "feats.npy").write_bytes(b"x")
    (corpus_copy / ".git").mkdir()
    (corpus_copy / "dev-other").mkdir()
    (corpus_copy / "flat").mkdir()
    (corpus_copy / "flat" / "1-2-0000.wav").write_bytes(b"")
    assert split_dirs(corpus_copy) == ["dev", "dev-other", "flat", "test", "train"]
    assert list_splits(corpus_copy) == ["dev", "test", "train"]

def test_transcripts_are_upper_cased_and_whitespace_collapsed(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    lines = trans.read_text().splitlines()
    utt_id = lines[0].split(" ", 1)[0]
    lines[0] = f"{utt_id}   hello   there  World"
    trans.write_text("\n".join(lines) + "\n\n")  # blank lines are allowed
    assert {u.utt_id: u.transcript for u in read_split(corpus_copy, "dev")}[utt_id] == "HELLO THERE WORLD"


def test_wav_files_are_read_too(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    flac = sorted(chapter.glob("*.flac"))[0]
    audio, rate = sf.read(str(flac))
    sf.write(str(flac.with_suffix(".wav")), audio, rate)
    flac.unlink()
    paths = {u.utt_id: u.audio_path for u in read_split(corpus_copy, "dev")}
    assert paths[flac.stem] == flac.with_suffix(".wav")


# -- bad input --------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"corpus root {tmp_path / 'nowhere'} does not exist")):
        read_split(tmp_path / "nowhere", "train")


def test_empty_root(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"corpus root {tmp_path} is empty")):
        check_root(tmp_path)
    with pytest.raises(DataError, match="is empty"):
        list_splits(tmp_path)


def test_missing_split_lists_the_available_ones(tiny_corpus):
    with pytest.raises(DataError) as info:
        read_split(tiny_corpus, "train-clean-100")
    message = str(info.value)
    assert f"split directory {tiny_corpus / 'train-clean-100'} not found" in message
    assert "found: dev, test, train" in message and "data.train_split" in message



def test_empty_split_directory(corpus_copy):
    shutil.rmtree(corpus_copy / "dev")
    (corpus_copy / "dev").mkdir()
    with pytest.raises(DataError, match=re.escape(f"split directory {corpus_copy / 'dev'} is empty. Fix: put")):
        read_split(corpus_copy, "dev")

def test_split_without_transcripts(corpus_copy):
    (corpus_copy / "other" / "1" / "2").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(f"{corpus_copy / 'other'} holds no SPEAKER/CHAPTER/*.trans.txt")):
        read_split(corpus_copy, "other")


def test_transcript_line_without_audio(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    flac = sorted(chapter.glob("*.flac"))[1]
    flac.unlink()
    with pytest.raises(DataError) as info:
        read_split(corpus_copy, "dev")
    message = str(info.value)
    assert f"{trans}:2" in message and f"no audio file {flac}" in message


def test_audio_without_transcript_line(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    speaker, chapter_id = chapter.parent.name, chapter.name
    orphan = chapter / f"{speaker}-{chapter_id}-0099.flac"
    shutil.copy(sorted(chapter.glob("*.flac"))[0], orphan)
    with pytest.raises(DataError, match=re.escape(f"audio file {orphan} has no line in {trans}")):
        read_split(corpus_copy, "dev")


def test_empty_transcript(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    lines = trans.read_text().splitlines()
    utt_id = lines[-1].split(" ", 1)[0]
    lines[-1] = utt_id + "   "
    trans.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{trans}:{len(lines)}: empty transcript for utterance '{utt_id}'")):
        read_split(corpus_copy, "dev")


def test_empty_transcript_file(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    trans.write_text("")
    with pytest.raises(DataError, match=re.escape(f"has no line in {trans}")):
        read_split(corpus_copy, "dev")


def test_duplicate_utterance_id(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join([*lines, lines[0]]) + "\n")
    utt_id = lines[0].split(" ", 1)[0]
    with pytest.raises(DataError, match=re.escape(f"{trans}:{len(lines) + 1}: utterance id '{utt_id}' appears twice")):
        read_split(corpus_copy, "dev")


def test_utterance_id_from_another_chapter(corpus_copy):
    chapter, trans = first_chapter(corpus_copy)
    trans.write_text(trans.read_text() + "1-2-0000 SOME TEXT\n")
    with pytest.raises(DataError, match=re.escape(f"{trans}:") + ".*'1-2-0000' does not start with"):
        read_split(corpus_copy, "dev")


# -- validate_corpus (what check_corpus.py prints) ----------------------------------------------------


@pytest.mark.parametrize("decode", [True, False])
def test_validate_corpus_statistics(tiny_corpus, decode):
    report = {s.name: s for s in validate_corpus(tiny_corpus, decode=decode)}
    assert list(report) == ["dev", "test", "train"]
    assert {name: s.utterances for name, s in report.items()} == {"dev": 6, "test": 6, "train": 24}
    assert {name: len(s.speakers) for name, s in report.items()} == {"dev": 2, "test": 2, "train": 4}
    seconds = sum(sf.info(str(p)).duration for p in (tiny_corpus / "train").rglob("*.flac"))
    assert report["train"].seconds == pytest.approx(seconds)
    assert report["train"].sample_rates == {16000}
    assert report["train"].vocabulary == {w for u in read_split(tiny_corpus, "train") for w in u.transcript.split()}


@pytest.mark.parametrize("decode", [True, False])
def test_validate_corpus_names_a_corrupt_file(corpus_copy, decode):
    flac = sorted((corpus_copy / "test").rglob("*.flac"))[2]
    flac.write_bytes(b"this is not a flac file" * 10)
    with pytest.raises(DataError, match=re.escape(f"cannot decode audio file {flac}")):
        validate_corpus(corpus_copy, ["test"], decode=decode)


@pytest.mark.parametrize("decode", [True, False])
def test_validate_corpus_names_an_empty_audio_file(corpus_copy, decode):
    flac = sorted((corpus_copy / "dev").rglob("*.flac"))[0]
    flac.unlink()
    wav = flac.with_suffix(".wav")
    sf.write(str(wav), np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match=re.escape(f"audio file {wav} holds no samples")):
        validate_corpus(corpus_copy, decode=decode)


def test_validate_corpus_reads_every_split_before_decoding(corpus_copy):
    flac = sorted((corpus_copy / "dev").rglob("*.flac"))[0]
    flac.write_bytes(b"this is not a flac file" * 10)
    (corpus_copy / "zz").mkdir()  # an empty split, sorted after the others
    with pytest.raises(DataError, match=re.escape(f"split directory {corpus_copy / 'zz'} is empty")):
        validate_corpus(corpus_copy)
