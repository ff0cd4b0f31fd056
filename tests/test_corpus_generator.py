"""The embedded corpus generator: layout, audio format, split hygiene, determinism, rebuilds, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import sentences, tiny_spec

from asr.data.synthetic.build import MANIFEST, assign_sentences, build_corpus, load_sentences
from asr.data.synthetic.espeak import Espeak, EspeakError, VoiceSettings
from asr.data.synthetic.text import TextSourceError

SPLITS = {"train": (24, 4), "dev": (6, 2), "test": (6, 2)}  # split -> (utterances, speakers) of tiny_corpus
FLAC_RE = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")
TRANSCRIPT_RE = re.compile(r"^[A-Z']+( [A-Z']+)*$")


def transcripts(root: Path) -> dict[str, dict[str, str]]:
    """split -> utterance id -> transcript, straight from the .trans.txt files."""
    out: dict[str, dict[str, str]] = {}
    for trans in sorted(root.glob("*/*/*/*.trans.txt")):
        split = trans.relative_to(root).parts[0]
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out.setdefault(split, {})[utt_id] = text
    return out


def flac_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.flac"))


@pytest.fixture(scope="module")
def same_seed_corpus(tmp_path_factory, text_file) -> Path:
    """The tiny corpus's spec built again elsewhere (into an existing empty directory) with 2 processes, not 1."""
    out = tmp_path_factory.mktemp("same_seed") / "tiny"
    out.mkdir()
    build_corpus(tiny_spec(out, text_file, seed=0, jobs=2), progress=False)
    return out


@pytest.fixture(scope="module")
def other_seed_corpus(tmp_path_factory, text_file) -> Path:
    """The tiny corpus's spec with seed 1, built over the leftovers of an 'interrupted' build."""
    out = tmp_path_factory.mktemp("other_seed") / "tiny"
    partial = out.with_name(out.name + ".partial")
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "stale.txt").write_text("left by an interrupted build\n")
    build_corpus(tiny_spec(out, text_file, seed=1), progress=False)
    return out


# -- layout and format --------------------------------------------------------------------------


def test_librispeech_layout(tiny_corpus):
    assert sorted(p.name for p in tiny_corpus.iterdir()) == ["SPEAKERS.TXT", MANIFEST, "dev", "test", "train"]
    for split, (n_utts, n_speakers) in SPLITS.items():
        speaker_dirs = sorted((tiny_corpus / split).iterdir())
        assert len(speaker_dirs) == n_speakers
        found = 0
        for speaker_dir in speaker_dirs:
            assert speaker_dir.is_dir() and speaker_dir.name.isdigit()
            chapters = list(speaker_dir.iterdir())
            assert len(chapters) == 1 and chapters[0].is_dir() and chapters[0].name.isdigit()
            chapter_dir = chapters[0]
            trans_name = f"{speaker_dir.name}-{chapter_dir.name}.trans.txt"
            names = sorted(p.name for p in chapter_dir.iterdir())
            assert trans_name in names
            flacs = [n for n in names if n != trans_name]
            matches = [FLAC_RE.match(n) for n in flacs]
            assert all(matches), flacs
            assert {(m.group(1), m.group(2)) for m in matches} == {(speaker_dir.name, chapter_dir.name)}
            assert [int(m.group(3)) for m in matches] == list(range(len(flacs)))  # 0000, 0001, ...
            lines = (chapter_dir / trans_name).read_text().splitlines()
            assert [line.split(" ", 1)[0] for line in lines] == [n.removesuffix(".flac") for n in flacs]
            for line in lines:
                assert TRANSCRIPT_RE.match(line.split(" ", 1)[1]), line
            found += len(flacs)
        assert found == n_utts


def test_audio_is_16khz_mono_16bit_flac_with_speech(tiny_corpus):
    files = flac_files(tiny_corpus)
    assert len(files) == sum(n for n, _ in SPLITS.values())
    for path in files:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16"), path
        audio, _ = sf.read(str(path), dtype="float32")
        assert 0.8 < audio.size / 16000 < 8.0, path  # a 5-8 word sentence
        assert 0.2 < np.abs(audio).max() <= 1.0, path  # speech at gain 0.4-0.9, not silence


def test_splits_have_disjoint_speakers_and_sentences(tiny_corpus):
    texts = transcripts(tiny_corpus)
    assert {split: len(t) for split, t in texts.items()} == {split: n for split, (n, _) in SPLITS.items()}
    speakers = {split: {p.name for p in (tiny_corpus / split).iterdir()} for split in SPLITS}
    sentence_sets = {split: set(t.values()) for split, t in texts.items()}
    for split, utts in texts.items():
        assert len(sentence_sets[split]) == len(utts), f"repeated sentence in {split}"
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not speakers[a] & speakers[b], (a, b)
        assert not sentence_sets[a] & sentence_sets[b], (a, b)
    assert set().union(*sentence_sets.values()) <= set(sentences())  # every transcript comes from the text


def test_manifest_and_speaker_list(tiny_corpus):
    manifest = json.loads((tiny_corpus / MANIFEST).read_text())
    assert manifest["settings"]["seed"] == 0
    assert manifest["settings"]["splits"] == {"train": 24, "dev": 6, "test": 6}
    for split, (n_utts, n_speakers) in SPLITS.items():
        stats = manifest["splits"][split]
        assert (stats["utterances"], stats["speakers"]) == (n_utts, n_speakers)
        seconds = sum(sf.info(str(p)).frames / 16000 for p in flac_files(tiny_corpus / split))
        assert stats["hours"] == pytest.approx(seconds / 3600, abs=0.0006)
    rows = [line.split("|") for line in (tiny_corpus / "SPEAKERS.TXT").read_text().splitlines()[1:]]
    listed = {row[0].strip(): (row[1].strip(), row[2].strip(), row[4].split()[0]) for row in rows}
    for split in SPLITS:
        for speaker_dir in (tiny_corpus / split).iterdir():
            sex, subset, voice = listed.pop(speaker_dir.name)
            assert subset == split
            assert sex == ("F" if voice.split("+")[1].startswith("f") else "M")
    assert not listed  # no speaker without a directory


def test_no_partial_or_temporary_files_left(tiny_corpus):
    assert not tiny_corpus.with_name(tiny_corpus.name + ".partial").exists()
    assert not list(tiny_corpus.rglob("*.tmp"))


# -- determinism -----------------------------------------------------------------------------


def test_same_seed_gives_identical_corpus_whatever_the_process_count(tiny_corpus, same_seed_corpus):
    assert transcripts(same_seed_corpus) == transcripts(tiny_corpus)
    ours = [p.relative_to(same_seed_corpus) for p in flac_files(same_seed_corpus)]
    assert ours == [p.relative_to(tiny_corpus) for p in flac_files(tiny_corpus)]
    for rel in ours:
        a, _ = sf.read(str(tiny_corpus / rel), dtype="int16")
        b, _ = sf.read(str(same_seed_corpus / rel), dtype="int16")
        assert np.array_equal(a, b), rel


def test_other_seed_gives_other_corpus(tiny_corpus, other_seed_corpus):
    ours, theirs = transcripts(other_seed_corpus), transcripts(tiny_corpus)
    assert set(ours["train"].values()) != set(theirs["train"].values())
    speakers = [{p.name for p in (root / "train").iterdir()} for root in (other_seed_corpus, tiny_corpus)]
    assert speakers[0] != speakers[1]
    a, _ = sf.read(str(flac_files(tiny_corpus / "dev")[0]), dtype="int16")
    b, _ = sf.read(str(flac_files(other_seed_corpus / "dev")[0]), dtype="int16")
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_interrupted_build_leftovers_are_discarded(other_seed_corpus):
    assert not other_seed_corpus.with_name(other_seed_corpus.name + ".partial").exists()
    assert not list(other_seed_corpus.rglob("stale.txt"))
    assert len(flac_files(other_seed_corpus)) == 36


# -- rebuilding and errors ------------------------------------------------------------------------


def test_rebuild_with_same_settings_keeps_the_corpus(corpus_copy, text_file):
    before = {p: p.stat().st_mtime_ns for p in corpus_copy.rglob("*")}
    manifest = json.loads((corpus_copy / MANIFEST).read_text())
    again = build_corpus(tiny_spec(corpus_copy, text_file, jobs=2), progress=False)  # jobs is not a setting
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in corpus_copy.rglob("*")} == before


def test_rebuild_with_other_settings_is_refused(corpus_copy, text_file):
    before = (corpus_copy / MANIFEST).read_text()
    with pytest.raises(FileExistsError, match="other settings"):
        build_corpus(tiny_spec(corpus_copy, text_file, seed=1), progress=False)
    with pytest.raises(FileExistsError):
        build_corpus(tiny_spec(corpus_copy, text_file, splits={"train": 20, "dev": 6, "test": 6}), progress=False)
    assert (corpus_copy / MANIFEST).read_text() == before


def test_foreign_directory_is_refused(tmp_path, text_file):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a corpus\n")
    with pytest.raises(FileExistsError, match="not a corpus built by this tool"):
        build_corpus(tiny_spec(out, text_file), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_too_few_sentences_names_the_counts(tmp_path, text_file):
    out = tmp_path / "big"
    spec = tiny_spec(out, text_file, splits={"train": 200, "dev": 10, "test": 10},
                     speakers={"train": 2, "dev": 1, "test": 1})
    with pytest.raises(TextSourceError) as info:
        build_corpus(spec, progress=False)
    message = str(info.value)
    assert "144 usable sentences" in message and "need 220" in message
    assert "train=200" in message and "dev=10" in message
    assert not out.exists() and not out.with_name("big.partial").exists()


@pytest.mark.parametrize(("splits", "speakers", "match"), [
    ({"train": 8, "dev": 2, "test": 2}, {"train": 2, "dev": 1}, "must name the same splits"),
    ({"train": 8, "dev": 2, "test": 2}, {"train": 2, "dev": 3, "test": 1}, "split dev: 3 speakers for 2 utterances"),
    ({"train": 8, "dev": 2, "test": 2}, {"train": 2, "dev": 0, "test": 1}, "split dev: 0 speakers"),
])
def test_inconsistent_split_settings_raise(tmp_path, text_file, splits, speakers, match):
    with pytest.raises(ValueError, match=match):
        build_corpus(tiny_spec(tmp_path / "c", text_file, splits=splits, speakers=speakers), progress=False)


def test_load_sentences_filters_by_length_and_vocabulary(tmp_path, text_file):
    everything = load_sentences(tiny_spec(tmp_path, text_file))
    assert sorted(everything) == sorted(sentences())
    short = load_sentences(tiny_spec(tmp_path, text_file, min_words=4, max_words=8))
    assert sorted(short) == sorted(s for s in sentences() if len(s.split()) <= 8) and len(short) < len(everything)
    common = load_sentences(tiny_spec(tmp_path, text_file, top_words=20))
    assert 0 < len(common) < len(everything)
    vocab = {w for s in common for w in s.split()}
    assert len(vocab) <= 20 and {"THE", "TODAY"} <= vocab


def test_assign_sentences_is_disjoint_seeded_and_keeps_eval_splits_stable():
    pool = [f"SENTENCE NUMBER {i}" for i in range(100)]
    out = assign_sentences(pool, {"train": 50, "dev": 10, "test": 10}, seed=3)
    assert list(out) == ["train", "dev", "test"]
    assert [len(v) for v in out.values()] == [50, 10, 10]
    assert len(set().union(*map(set, out.values()))) == 70
    assert out == assign_sentences(pool, {"train": 50, "dev": 10, "test": 10}, seed=3)
    assert out != assign_sentences(pool, {"train": 50, "dev": 10, "test": 10}, seed=4)
    smaller = assign_sentences(pool, {"train": 20, "dev": 10, "test": 10}, seed=3)
    assert (smaller["dev"], smaller["test"]) == (out["dev"], out["test"])  # dealt before train
    assert smaller["train"] == out["train"][:20]


def test_espeak_engine_speaks_seeded_and_refuses_unknown_voices():
    engine = Espeak()
    slow, fast = VoiceSettings("en+m1", 120, 50, 50), VoiceSettings("en+m1", 300, 50, 50)
    text = "the old man saw a good house today"
    wave = engine.synthesize(text, slow, seed=1)
    assert wave.dtype == np.int16 and wave.size > 0.5 * engine.sample_rate and np.abs(wave).max() > 1000
    assert engine.synthesize(text, fast, seed=1).size < 0.7 * wave.size  # rate is words per minute
    with pytest.raises(EspeakError, match="no voice named 'xx-nowhere'"):
        engine.synthesize(text, VoiceSettings("xx-nowhere", 150, 50, 50))
