"""Real-scale data: several training splits read as one set, and Lhotse manifests as an input.

The tiny corpus is written as Lhotse manifests by scripts/lhotse_manifests.py and read back both ways: the
utterance ids, transcripts and features must be identical.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.data.corpus import read_split
from asr.data.datamodule import AsrDataModule
from asr.data.errors import DataError
from asr.data.lhotse_manifests import manifest_paths, read_lhotse_split, write_lhotse_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")


def run_script(*overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "lhotse_manifests.py"), *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def manifests(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus's recordings, supervisions and cuts manifests, written by the script."""
    out = tmp_path_factory.mktemp("lhotse") / "manifests"
    done = run_script(f"data.root={tiny_corpus}", f"data.lhotse.dir={out}", "cuts=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"synthetic_{kind}_{split}.jsonl.gz" for split in SPLITS
                                                           for kind in ("recordings", "supervisions", "cuts"))
    return out


def make_dm(root: Path, work: Path, **overrides) -> AsrDataModule:
    settings = dict(root=str(root), train_split="train", dev_splits=["dev"], test_splits=["test"],
                    cache_dir=str(work / "features"), tokenizer={"dir": str(work / "tokenizer"), "vocab_size": 40},
                    spec_augment=None, batch_size=4, eval_batch_size=4, feature_jobs=1, progress=False)
    settings.update(overrides)
    dm = AsrDataModule(**settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_the_same_corpus_read_both_ways_gives_identical_ids_transcripts_and_features(tiny_corpus, manifests,
                                                                                      tmp_path):
    layout = make_dm(tiny_corpus, tmp_path / "layout")
    lhotse = make_dm(tmp_path / "nowhere", tmp_path / "lhotse", format="lhotse",
                     lhotse={"dir": str(manifests), "prefix": "synthetic", "suffix": "jsonl.gz"})
    # separate caches: the Lhotse reading computed its own features from the audio
    assert len(list((tmp_path / "lhotse" / "features").rglob("??/*.npy"))) == 36
    assert torch.equal(layout.cmvn.mean, lhotse.cmvn.mean) and torch.equal(layout.cmvn.std, lhotse.cmvn.std)
    for split in SPLITS:
        a, b = layout.datasets[split], lhotse.datasets[split]
        assert [u.utt_id for u in a.utterances] == [u.utt_id for u in b.utterances]
        assert [u.transcript for u in a.utterances] == [u.transcript for u in b.utterances]
        assert [u.speaker for u in a.utterances] == [u.speaker for u in b.utterances]
        assert all(np.array_equal(x, y) for x, y in zip(a._features, b._features, strict=True))
        for i in range(len(a)):
            assert torch.equal(a[i]["features"], b[i]["features"]) and torch.equal(a[i]["tokens"], b[i]["tokens"])


def test_cuts_alone_read_as_the_recordings_and_supervisions(tiny_corpus, manifests, tmp_path):
    for split in ("dev", "test"):
        shutil.copy(manifests / f"synthetic_cuts_{split}.jsonl.gz", tmp_path)
        assert read_lhotse_split(tmp_path, split, "synthetic") == read_split(tiny_corpus, split)


def test_manifests_of_lhotses_own_librispeech_recipe_read_as_the_layout(tiny_corpus, tmp_path):
    """``lhotse prepare librispeech`` (its recipe function) on the tiny corpus, which is in LibriSpeech's layout."""
    from lhotse.recipes.librispeech import prepare_librispeech

    prepare_librispeech(tiny_corpus, dataset_parts=["dev"], output_dir=tmp_path)
    assert read_lhotse_split(tmp_path, "dev", "librispeech") == read_split(tiny_corpus, "dev")


def test_writer_round_trip_without_the_script(tiny_corpus, tmp_path):
    utterances = read_split(tiny_corpus, "dev")
    written = write_lhotse_split(utterances, tmp_path, "dev", "mine", suffix="jsonl")
    assert [p.name for p in written] == ["mine_recordings_dev.jsonl", "mine_supervisions_dev.jsonl"]
    assert read_lhotse_split(tmp_path, "dev", "mine", suffix="jsonl") == utterances


def one_line_error(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Fix:" in message, message
    return message


def test_missing_corrupt_or_mismatched_manifests_name_the_file_and_the_fix(manifests, tmp_path):
    message = one_line_error(lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))
    assert "synthetic_recordings_dev.jsonl.gz" in message and "synthetic_cuts_dev.jsonl.gz" in message

    paths = manifest_paths(tmp_path, "dev", "synthetic")
    shutil.copy(manifests / paths["recordings"].name, paths["recordings"])
    message = one_line_error(lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))
    assert f"{paths['supervisions']} not found" in message

    paths["supervisions"].write_bytes(b"not gzip at all")
    assert f"cannot read Lhotse manifest {paths['supervisions']}" in one_line_error(
        lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))

    paths["supervisions"].write_bytes(gzip.compress(b'{"id": "broken'))
    assert f"cannot read Lhotse manifest {paths['supervisions']}" in one_line_error(
        lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))

    paths["supervisions"].write_bytes(b"")
    assert f"Lhotse manifest {paths['supervisions']}" in one_line_error(
        lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))

    shutil.copy(manifests / paths["recordings"].name, paths["supervisions"])  # recordings where supervisions belong
    assert "holds a RecordingSet, not a SupervisionSet" in one_line_error(
        lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))

    shutil.copy(manifests / "synthetic_supervisions_test.jsonl.gz", paths["supervisions"])  # another split's
    assert "which" in one_line_error(lambda: read_lhotse_split(tmp_path, "dev", "synthetic"))


def test_missing_audio_is_named_with_its_manifest(tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / "dev", corpus / "dev")
    utterances = read_split(corpus, "dev")
    write_lhotse_split(utterances, tmp_path / "m", "dev", "synthetic")
    utterances[2].audio_path.unlink()
    message = one_line_error(lambda: read_lhotse_split(tmp_path / "m", "dev", "synthetic"))
    assert f"audio file {utterances[2].audio_path} not found" in message and "synthetic_supervisions_dev" in message


# -- several training splits -----------------------------------------------------------------------------------
def test_several_training_splits_are_one_concatenated_training_set(tiny_corpus, manifests, tmp_path):
    dm = make_dm(tiny_corpus, tmp_path / "layout", train_split=["train", "dev"], dev_splits=["test"])
    assert dm.train_split == "train+dev" and sorted(dm.datasets) == ["test", "train+dev"]
    expected = [*read_split(tiny_corpus, "train"), *read_split(tiny_corpus, "dev")]
    assert dm.datasets["train+dev"].utterances == expected
    assert len(next(iter(dm.train_dataloader()))["utt_ids"]) == 4
    lhotse = make_dm(tmp_path, tmp_path / "lhotse", train_split=["train", "dev"], dev_splits=["test"],
                     format="lhotse", lhotse={"dir": str(manifests), "prefix": "synthetic"})
    assert lhotse.datasets["train+dev"].utterances == expected


def test_a_missing_training_split_names_its_folder_before_any_feature_is_computed(tiny_corpus, tmp_path):
    dm = AsrDataModule(root=str(tiny_corpus), train_split=["train", "train-clean-360"], dev_splits=["dev"],
                       test_splits=["test"], cache_dir=str(tmp_path / "features"),
                       tokenizer={"dir": str(tmp_path / "tokenizer"), "vocab_size": 40}, progress=False)
    message = one_line_error(dm.prepare_data)
    assert f"split directory {tiny_corpus / 'train-clean-360'} not found" in message
    assert "data.train_split" in message and not (tmp_path / "features").exists()


def test_an_utterance_in_two_training_splits_is_refused(corpus_copy, tmp_path):
    shutil.copytree(corpus_copy / "dev", corpus_copy / "dev2")
    dm = AsrDataModule(root=str(corpus_copy), train_split=["train", "dev", "dev2"], dev_splits=["test"],
                       test_splits=["test"], cache_dir=str(tmp_path / "features"), progress=False)
    message = one_line_error(dm.prepare_data)
    assert "training splits dev and dev2" in message


@pytest.mark.parametrize(("settings", "key"), [
    ({"train_split": []}, "data.train_split"),
    ({"train_split": 5}, "data.train_split"),
    ({"train_split": ["train", 5]}, "data.train_split"),
    ({"train_split": ["train", "train"]}, "data.train_split"),
    ({"format": "kaldi"}, "data.format"),
    ({"format": "lhotse", "download": True}, "data.download"),
    ({"lhotse": {"dir": "x", "manifests": "y"}}, "data.lhotse"),
])
def test_bad_data_settings_name_the_key(settings, key, tmp_path):
    args = dict(root=str(tmp_path), train_split="train", dev_splits=["dev"], test_splits=["test"],
                cache_dir=str(tmp_path / "features"))
    with pytest.raises(DataError, match=key.replace(".", r"\.")):
        AsrDataModule(**{**args, **settings})


def test_the_layout_path_does_not_import_lhotse():
    code = ("import sys, asr.data.datamodule, asr.data.corpus, asr.data.lhotse_manifests; "
            "assert 'lhotse' not in sys.modules, 'lhotse imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_script_refuses_to_read_manifests_as_its_input(tmp_path):
    done = run_script("data.format=lhotse", f"data.lhotse.dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "lhotse_manifests: " in done.stderr and "data.format=librispeech" in done.stderr


def test_check_corpus_reads_lhotse_manifests_as_the_layout(tiny_corpus, manifests, tmp_path, capsys):
    from asr_helpers import load_module

    check_corpus = load_module(ROOT / "scripts" / "check_corpus.py", "_script_check_corpus_lhotse")
    assert check_corpus.main([str(tiny_corpus)]) == 0
    layout = capsys.readouterr().out
    assert check_corpus.main([str(manifests), "--lhotse", "synthetic"]) == 0
    assert capsys.readouterr().out == layout
    assert check_corpus.main([str(manifests), "--lhotse", "other"]) == 2
    assert "no Lhotse manifests named other_" in capsys.readouterr().err
