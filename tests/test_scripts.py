"""The data command-line tools: scripts/check_corpus.py and scripts/make_corpus.py (called in-process)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf
from asr_helpers import load_module

from asr.data.corpus import list_splits, read_split
from asr.data.errors import DataError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    return load_module(SCRIPTS / f"{name}.py", f"_script_{name}")


@pytest.fixture(scope="module")
def check_corpus() -> ModuleType:
    return load_script("check_corpus")


@pytest.fixture(scope="module")
def make_corpus() -> ModuleType:
    return load_script("make_corpus")


# -- check_corpus.py ------------------------------------------------------------------------------


def test_check_corpus_ok(check_corpus, tiny_corpus, capsys):
    assert check_corpus.main([str(tiny_corpus)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["split", "utterances", "hours", "speakers", "vocabulary", "sample", "rates"]
    rows = {r[0]: r for r in (line.split() for line in out.splitlines()[1:]) if r[0] in ("dev", "test", "train")}
    assert {name: (int(r[1]), int(r[3]), r[-1]) for name, r in rows.items()} == {
        "dev": (6, 2, "16000"), "test": (6, 2, "16000"), "train": (24, 4, "16000")}
    seconds = sum(sf.info(str(p)).duration for p in (tiny_corpus / "train").rglob("*.flac"))
    assert rows["train"][2] == f"{seconds / 3600:.2f}"
    words = {w for u in read_split(tiny_corpus, "train") for w in u.transcript.split()}
    assert int(rows["train"][4]) == len(words)
    assert "note:" not in out  # the splits share no speaker
    assert out.rstrip().endswith("OK")


def test_check_corpus_selected_splits_without_decoding(check_corpus, tiny_corpus, capsys):
    assert check_corpus.main([str(tiny_corpus), "--splits", "dev", "--no-decode"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert rows == ["dev"]


def test_check_corpus_reports_shared_speakers(check_corpus, corpus_copy, capsys):
    speaker = sorted((corpus_copy / "train").iterdir())[0]
    shutil.copytree(speaker, corpus_copy / "dev" / speaker.name)
    assert check_corpus.main([str(corpus_copy)]) == 0
    assert "note: splits dev and train share 1 speakers" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [[], ["--no-decode"]])
def test_check_corpus_corrupt_flac(check_corpus, corpus_copy, capsys, flags):
    flac = sorted((corpus_copy / "train").rglob("*.flac"))[5]
    flac.write_bytes(bytes(range(256)) * 8)
    assert check_corpus.main([str(corpus_copy), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("check_corpus: ") and str(flac) in err


def test_check_corpus_zero_byte_file(check_corpus, corpus_copy, capsys):
    flac = sorted((corpus_copy / "dev").rglob("*.flac"))[0]
    flac.write_bytes(b"")
    assert check_corpus.main([str(corpus_copy)]) == 2
    assert str(flac) in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--no-decode"]])
def test_check_corpus_zero_sample_file(check_corpus, corpus_copy, capsys, flags):
    flac = sorted((corpus_copy / "test").rglob("*.flac"))[0]
    flac.unlink()
    sf.write(str(flac.with_suffix(".wav")), np.zeros(0, np.float32), 16000)
    assert check_corpus.main([str(corpus_copy), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flac.with_suffix('.wav')} holds no samples" in err


def test_check_corpus_missing_root_and_layout_errors(check_corpus, tmp_path, corpus_copy, capsys):
    assert check_corpus.main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.flac").write_bytes(b"")
    assert check_corpus.main([str(tmp_path / "flat")]) == 2
    assert "no split under" in capsys.readouterr().err
    trans = sorted((corpus_copy / "dev").rglob("*.trans.txt"))[0]
    trans.write_text(trans.read_text() + trans.read_text().splitlines()[0] + "\n")
    assert check_corpus.main([str(corpus_copy)]) == 2
    assert f"{trans}:" in capsys.readouterr().err



def test_check_corpus_empty_split_directory_fails_as_prepare_data_does(check_corpus, corpus_copy, tmp_path, capsys):
    from asr.data.datamodule import AsrDataModule

    empty = corpus_copy / "dev-other"
    empty.mkdir()
    assert check_corpus.main([str(corpus_copy)]) == 2
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    expected = f"split directory {empty} is empty. Fix: put the split's SPEAKER/CHAPTER directories in it"
    assert captured.err.startswith(f"check_corpus: {expected}") and captured.err.count("\n") == 1
    datamodule = AsrDataModule(root=str(corpus_copy), train_split="train", dev_splits=["dev", "dev-other"],
                               test_splits=["test"], cache_dir=str(tmp_path / "features"),
                               tokenizer={"dir": str(tmp_path / "tok"), "vocab_size": 60}, progress=False)
    with pytest.raises(DataError) as info:
        datamodule.prepare_data()
    assert f"check_corpus: {info.value}\n" == captured.err


@pytest.mark.parametrize("layout", ["speaker dirs only", "flat audio", "emptied"])
def test_check_corpus_split_without_transcripts(check_corpus, corpus_copy, capsys, layout):
    split = corpus_copy / ("dev" if layout == "emptied" else "extra")
    if layout == "speaker dirs only":
        (split / "19" / "198").mkdir(parents=True)
    elif layout == "flat audio":
        split.mkdir()
        shutil.copy(sorted((corpus_copy / "dev").rglob("*.flac"))[0], split / "19-198-0000.flac")
    else:
        shutil.rmtree(split)
        split.mkdir()
    assert check_corpus.main([str(corpus_copy), "--no-decode"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"check_corpus: split directory {split} ") and err.count("\n") == 1 and "Fix:" in err


def test_check_corpus_skips_directories_that_are_not_splits(check_corpus, corpus_copy, capsys):
    (corpus_copy / "tokenizer").mkdir()  # left empty by a failed tokenizer training: still not a split
    (corpus_copy / "notes").mkdir()
    (corpus_copy / "notes" / "README.txt").write_text("made on 2026-12-03\n")
    (corpus_copy / ".hidden").mkdir()
    assert check_corpus.main([str(corpus_copy), "--no-decode"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["dev", "test", "train"]


def test_check_corpus_bad_transcripts(check_corpus, corpus_copy, capsys, caplog):
    trans = sorted((corpus_copy / "dev").rglob("*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join([lines[0].lower() + ",", *lines[1:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="asr.data.corpus"):
        assert check_corpus.main([str(corpus_copy), "--no-decode"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    assert [r.getMessage().split(" normalized")[0] for r in caplog.records] == [f"{trans}: 1 of {len(lines)} "
                                                                                "transcript lines"]
    trans.write_bytes(trans.read_bytes().replace(b",", b"\xe9"))
    assert check_corpus.main([str(corpus_copy), "--no-decode"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"check_corpus: {trans}:1: byte 0xe9") and "re-encode the file as UTF-8" in err


# -- make_corpus.py -------------------------------------------------------------------------------


def cli_args(out: Path, text: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--train", "8", "--dev", "2", "--test", "2", "--text", str(text), "--quiet",
            "jobs=1", "top_words=null", "speakers.train=2", "speakers.dev=1", "speakers.test=1", "accents=[en]",
            "variants=[m1,f2,m3]", *extra]


def test_make_corpus_builds_and_reuses(make_corpus, tmp_path, text_file, capsys):
    out = tmp_path / "cli"
    assert make_corpus.main(cli_args(out, text_file)) == 0
    printed = capsys.readouterr().out
    assert "train: 8 utterances, 2 speakers" in printed and f"corpus at {out}" in printed
    manifest = json.loads((out / "corpus.json").read_text())
    settings = manifest["settings"]
    assert settings["splits"] == {"train": 8, "dev": 2, "test": 2}
    assert settings["speakers"] == {"train": 2, "dev": 1, "test": 1}
    assert settings["accents"] == ["en"] and settings["variants"] == ["m1", "f2", "m3"]
    assert settings["text"] == str(text_file) and settings["top_words"] is None
    assert settings["max_words"] == 12 and settings["unseen_templates"] is False  # from conf/corpus/synthetic.yaml
    assert list_splits(out) == ["dev", "test", "train"]
    assert [len(read_split(out, s)) for s in ("train", "dev", "test")] == [8, 2, 2]

    assert make_corpus.main(cli_args(out, text_file)) == 0  # same settings: kept as it is
    assert json.loads((out / "corpus.json").read_text()) == manifest
    capsys.readouterr()
    assert make_corpus.main(cli_args(out, text_file, "--seed", "3")) == 2
    assert "other settings" in capsys.readouterr().err


def test_make_corpus_missing_text_file(make_corpus, tmp_path, capsys):
    out = tmp_path / "never"
    assert make_corpus.main(cli_args(out, tmp_path / "missing.txt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_corpus: error:") and "missing.txt" in err and "no such file" in err
    assert not out.exists()


def test_make_corpus_too_many_utterances_for_the_text(make_corpus, tmp_path, text_file, capsys):
    args = cli_args(tmp_path / "big", text_file)
    args[args.index("--train") + 1] = "500"
    assert make_corpus.main(args) == 2
    assert "144 usable sentences but the splits need 504" in capsys.readouterr().err
