"""scripts/transcribe.py: a trained checkpoint transcribes audio files, offline and streaming; bad
inputs give a non-zero exit status and a message naming the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from asr_helpers import shared_dir, trained_run

from asr.checkpoint import load_module, transcribe_features
from asr.data.audio import load_audio
from asr.data.corpus import read_split
from asr.data.features import log_mel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "transcribe.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def transcribe():
    spec = importlib.util.spec_from_file_location("transcribe_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    output_dir, _ = trained_run(tiny_corpus, shared_dir(tmp_path_factory))
    return output_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def module(checkpoint):
    return load_module(checkpoint)


@pytest.fixture(scope="module")
def flac(tiny_corpus) -> Path:
    return read_split(tiny_corpus, "test")[0].audio_path


def expected_text(module, path: Path, beam: int) -> str:
    wave = load_audio(path, module.assets.features.sample_rate)
    return transcribe_features(module, [module.assets.cmvn(log_mel(wave, module.assets.features))], beam)[0]


def test_offline_transcription_prints_path_and_text(transcribe, checkpoint, module, flac, capsys):
    assert transcribe.main([str(checkpoint), str(flac)]) == 0
    out = capsys.readouterr().out
    assert out == f"{flac}: {expected_text(module, flac, beam=module.decoding['beam_size'])}\n"
    assert module.decoding["beam_size"] == 2  # the checkpoint's beam (decoding.beam_size=2)


def test_greedy_and_several_files(transcribe, checkpoint, module, tiny_corpus, capsys):
    paths = [u.audio_path for u in read_split(tiny_corpus, "dev")[:2]]
    assert transcribe.main([str(checkpoint), *map(str, paths), "--beam", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}: {expected_text(module, p, beam=0)}" for p in paths]


def test_streaming_transcription(transcribe, checkpoint, module, flac, capsys):
    # streaming gives offline greedy decoding's text (its step limit included): chunking must not change it
    assert transcribe.main([str(checkpoint), str(flac), "--stream", "--chunk-ms", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{flac}: {expected_text(module, flac, beam=0)}"
    for line in lines[:-1]:  # partial results: "<path> [  1.20s] <text so far>"
        assert line.startswith(f"{flac} [") and "s] " in line


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["missing", "empty", "not_audio", "too_short"])
def test_bad_audio_fails_naming_the_file(transcribe, checkpoint, tmp_path, capsys, kind, stream):
    path = tmp_path / f"{kind}.flac"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_audio":
        path.write_text("this is not audio, just some text\n" * 20)
    elif kind == "too_short":  # one sample less than a whole pooling group of 25 ms frames
        needed = transcribe.min_samples(transcribe.load(str(checkpoint), "auto", 1))
        sf.write(path, np.full(needed - 1, 0.1, dtype=np.float32), 16000)
    rc = transcribe.main([str(checkpoint), str(path), *(["--stream"] if stream else [])])
    captured = capsys.readouterr()
    assert rc != 0
    assert str(path) in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("stream", [False, True])
def test_shortest_usable_audio(transcribe, checkpoint, module, tmp_path, capsys, stream):
    needed = transcribe.min_samples(transcribe.load(str(checkpoint), "auto", 1))
    reduction = module.model.encoder.reduction  # x8 here: 2 stacked input frames, pooled x2 x2
    assert reduction == 8
    assert needed == 400 + (reduction - 1) * 160  # 25 ms window + 7 shifts of 10 ms: 8 feature frames, reduced to one
    path = tmp_path / "short.flac"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, needed).astype(np.float32), 16000)
    assert transcribe.main([str(checkpoint), str(path), *(["--stream"] if stream else [])]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{path}: ")


def test_missing_checkpoint_fails(transcribe, flac, tmp_path, capsys):
    missing = tmp_path / "no.ckpt"
    assert transcribe.main([str(missing), str(flac)]) != 0
    assert str(missing) in capsys.readouterr().err
