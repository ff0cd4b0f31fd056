"""Shared fixtures: tiny generated corpora (no download: the text is made up here)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from asr_helpers import corpus_copy_for_runs, one_thread, shared_dir

from asr.data.synthetic.build import CorpusSpec, build_corpus

_SUBJECTS = ["THE OLD MAN", "HER SISTER", "MY FATHER", "THE YOUNG LADY", "OUR FRIEND", "HIS MOTHER"]
_VERBS = ["SAW", "LIKED", "WANTED", "FOUND", "KNEW", "MET"]
_OBJECTS = ["A GOOD HOUSE", "THE LITTLE GARDEN", "HER NEW LETTER", "THE LONG ROAD", "A FINE DAY",
            "THE WHOLE FAMILY"]
_ENDINGS = ["TODAY", "AT LAST", "IN TOWN", "VERY WELL"]


def sentences() -> list[str]:
    """144 distinct, speakable sentences of 5 to 8 words."""
    return [f"{s} {v} {o} {e}" for s, v, o, e in itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)][::6]


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n\n".join(s.capitalize() + "." for s in sentences()) + "\n")
    return path


def tiny_spec(out: Path, text: Path, seed: int = 0, **overrides) -> CorpusSpec:
    settings = dict(out=str(out), splits={"train": 24, "dev": 6, "test": 6}, speakers={"train": 4, "dev": 2, "test": 2},
                    seed=seed, text=str(text), top_words=None, min_words=4, max_words=12,
                    accents=["en", "en-US"], variants=["m1", "f2", "m3"], jobs=1)
    settings.update(overrides)
    return CorpusSpec(**settings)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, text_file) -> Path:
    """A 36-utterance corpus in the LibriSpeech layout, built once per pytest run. Do not modify it."""
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_corpus(tiny_spec(out, text_file), progress=False)
    return out


@pytest.fixture(scope="session")
def cpp_extension() -> None:
    """Fail (never skip) where the C++ kernels do not build: their tests must run on this machine."""
    from asr.model import lowrank_lstm

    info = lowrank_lstm.backend_info()
    if info["backend"] != "cpp":
        pytest.fail(f"the C++ extension must build on this machine: {info['reason']}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny models and utterance-sized features are faster that way, and many times faster when the other cores
    are busy (threads wait on each other)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The pytest run's shared directory of memoized runs (asr_helpers.shared_dir)."""
    return shared_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus(tiny_corpus, base) -> Path:
    """The one writable copy of the tiny corpus that training runs share (asr_helpers.corpus_copy_for_runs)."""
    return corpus_copy_for_runs(tiny_corpus, base)


@pytest.fixture
def corpus_copy(tiny_corpus, tmp_path) -> Path:
    """A private copy of the tiny corpus that a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, dst)
    return dst
