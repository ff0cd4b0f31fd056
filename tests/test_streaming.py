"""StreamingRecognizer: audio fed in chunks gives exactly the tokens of offline greedy decoding."""

from __future__ import annotations

import pytest
import torch
from asr_helpers import firing_model, streaming_waves, tiny_assets

from asr.data.features import log_mel
from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from asr.model import lowrank_lstm
from asr.model.asr_model import AsrModel
from asr.model.decoder import AttentionDecoder
from asr.streaming import StreamingRecognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tiny_corpus, tmp_path_factory):
    return tiny_assets(tiny_corpus, tmp_path_factory)


@pytest.fixture(scope="module")
def waves(tiny_corpus, assets):
    return streaming_waves(tiny_corpus, assets)


def make_model(assets, seed: int, **decoder) -> AsrModel:
    return firing_model(assets, seed, **decoder)


def offline(model: AsrModel, assets, wave: torch.Tensor) -> tuple[list[int], int]:
    feats = assets.cmvn(log_mel(wave, assets.features)).unsqueeze(0)
    lengths = torch.tensor([feats.shape[1]])
    memory_frames = int(model.encoder.output_lengths(lengths)[0])
    return model.greedy_decode(feats, lengths)[0], memory_frames


def stream(model: AsrModel, assets, wave: torch.Tensor, sizes: list[int], max_tokens: int):
    recognizer = StreamingRecognizer(model, assets, max_tokens=max_tokens)
    early, start, step = [], 0, 0
    while start < wave.numel():
        size = sizes[step % len(sizes)]
        early += recognizer.accept_audio(wave[start : start + size])
        start += size
        step += 1
    late = recognizer.finish()
    assert early + late == recognizer.tokens
    return recognizer, early, late


@pytest.mark.parametrize("step", ["cpp", "python"])
@pytest.mark.parametrize("sizes", [[1600], [4000], [160, 1234, 7, 5000, 399]])
def test_streaming_equals_offline_greedy(assets, waves, sizes, step, monkeypatch):
    if step == "python":  # the PyTorch decoder step (kept while waiting for audio) instead of the C++ one
        monkeypatch.setattr(AttentionDecoder, "inference_plan", lambda self: None)
    elif lowrank_lstm.backend() != "cpp":
        pytest.fail(f"the C++ extension must build on this machine: {lowrank_lstm.backend_info()['reason']}")
    progressed = ran_off = 0
    for seed in (0, 2):
        model = make_model(assets, seed)
        for wave in waves:
            expected, memory_frames = offline(model, assets, wave)
            recognizer, early, late = stream(model, assets, wave, sizes, model.max_len(memory_frames))
            assert recognizer.tokens == expected, (seed, sizes)
            assert recognizer.memory.shape[1] == memory_frames  # the streamed encoder saw every frame
            assert recognizer.text() == assets.tokenizer.decode(expected)
            assert not {PAD_ID, BOS_ID, EOS_ID} & set(recognizer.tokens)
            boundary = int(recognizer.state.boundary)
            progressed += bool(early) and 0 < boundary < memory_frames
            ran_off += bool(late) and boundary == memory_frames
    # test setup: the boundary moved through some utterances as audio arrived, and ran off the end of others
    assert progressed and ran_off


def test_streaming_equals_offline_when_the_utterance_ends_early(assets, waves):
    """A model that favours the end id stops (done) and ignores further audio, like greedy decoding."""
    model = make_model(assets, 2)
    with torch.no_grad():
        model.decoder.output.bias[EOS_ID] += 4.0
    wave = waves[0]
    expected, memory_frames = offline(model, assets, wave)
    recognizer, _, _ = stream(model, assets, wave, [800], model.max_len(memory_frames))
    assert recognizer.tokens == expected
    assert len(expected) < model.max_len(memory_frames) and recognizer.done


def test_streaming_features_equal_offline_features(assets, waves):
    """Features computed per whole frame as audio arrives are those of the whole utterance."""
    wave = waves[1]
    model = make_model(assets, 0)
    recognizer = StreamingRecognizer(model, assets)
    captured = []
    real_encode = recognizer._encode
    recognizer._encode = lambda feats: (captured.append(feats), real_encode(feats))
    for start in range(0, wave.numel(), 1000):
        recognizer.accept_audio(wave[start : start + 1000])
    streamed = torch.cat(captured, dim=1)[0]
    expected = assets.cmvn(log_mel(wave, assets.features))
    assert streamed.shape == expected.shape
    torch.testing.assert_close(streamed, expected, atol=1e-4, rtol=1e-5)


def test_reset_starts_a_new_utterance(assets, waves):
    model = make_model(assets, 0)
    recognizer = StreamingRecognizer(model, assets, max_tokens=20)
    recognizer.accept_audio(waves[0])
    recognizer.finish()
    first = list(recognizer.tokens)
    recognizer.reset()
    assert recognizer.tokens == [] and recognizer.memory.shape[1] == 0 and not recognizer.done
    recognizer.accept_audio(waves[0])
    recognizer.finish()
    assert recognizer.tokens == first


@pytest.mark.parametrize("sizes", [[1600], [160, 1234, 7, 5000, 399]])
def test_streaming_equals_offline_greedy_with_the_hard_fallback(assets, waves, sizes):
    """The fallback needs every remaining frame: streaming waits for the end of the input to use it."""
    changed = False
    for seed in (0, 2):
        model = make_model(assets, seed, hard_fallback=True)
        for wave in waves:
            expected, memory_frames = offline(model, assets, wave)
            recognizer, _, _ = stream(model, assets, wave, sizes, model.max_len(memory_frames))
            assert recognizer.tokens == expected, (seed, sizes)
            model.decoder.attention.hard_fallback = False
            changed |= offline(model, assets, wave)[0] != expected
            model.decoder.attention.hard_fallback = True
    assert changed  # test setup: the fallback made a difference somewhere
