"""AsrDataModule on the tiny corpus, the batch layout, and the length-bucketing batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.data.corpus import read_split
from asr.data.datamodule import AsrDataModule, BucketBatchSampler, UtteranceDataset, collate
from asr.data.errors import DataError
from asr.data.features import FeatureCache, SpecAugment
from asr.data.tokenizer import PAD_ID

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC_AUGMENT = {"freq_masks": 2, "freq_width": 15, "time_masks": 2, "time_width": 40, "time_ratio": 0.05}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("datamodule")


def make_dm(root, work, **overrides) -> AsrDataModule:
    settings = dict(root=str(root), train_split="train", dev_splits=["dev"], test_splits=["test"],
                    cache_dir=str(work / "features"), tokenizer={"dir": str(work / "tokenizer"), "vocab_size": 60},
                    spec_augment=SPEC_AUGMENT, batch_size=4, eval_batch_size=5, feature_jobs=1, progress=False)
    settings.update(overrides)
    return AsrDataModule(**settings)


@pytest.fixture(scope="module")
def dm(tiny_corpus, work) -> AsrDataModule:
    before = sorted(p.relative_to(tiny_corpus) for p in tiny_corpus.rglob("*"))
    module = make_dm(tiny_corpus, work)
    module.prepare_data()
    module.setup("fit")
    assert sorted(p.relative_to(tiny_corpus) for p in tiny_corpus.rglob("*")) == before  # nothing written to root
    return module


def test_prepare_and_setup_build_every_split(dm, tiny_corpus, work):
    assert sorted(dm.datasets) == ["dev", "test", "train"]
    assert [len(dm.datasets[s]) for s in ("train", "dev", "test")] == [24, 6, 6]
    assert dm.tokenizer.vocab_size == 60 and (work / "tokenizer" / "bpe60.model").is_file()
    cache_dir = work / "features" / dm.feature_cfg.key()
    assert len(list(cache_dir.glob("*/*.npy"))) == 36 and len(list(cache_dir.glob("cmvn-*.npy"))) == 1
    train_ids = [u.utt_id for u in read_split(tiny_corpus, "train")]
    assert [u.utt_id for u in dm.datasets["train"].utterances] == train_ids


def test_prepare_data_again_does_nothing_new(dm, tiny_corpus, work, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    again = make_dm(tiny_corpus, work)
    monkeypatch.setattr(FeatureCache, "_compute", lambda *a: pytest.fail("features recomputed"))
    again.prepare_data()
    again.setup("fit")
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == stamps
    assert torch.equal(again.cmvn.mean, dm.cmvn.mean)


def test_train_batch_layout(dm):
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    dataset = dm.datasets["train"]
    index = {u.utt_id: i for i, u in enumerate(dataset.utterances)}
    seen = []
    for batch in batches:
        assert set(batch) == {"features", "feature_lengths", "tokens", "token_lengths", "utt_ids", "transcripts"}
        feats, lengths, tokens, token_lengths = (batch[k] for k in ("features", "feature_lengths", "tokens",
                                                                    "token_lengths"))
        b = len(batch["utt_ids"])
        assert b == 4 and len(batch["transcripts"]) == b
        assert feats.dtype == torch.float32 and feats.ndim == 3 and feats.shape[0] == b and feats.shape[2] == 80
        assert lengths.dtype == torch.int64 and token_lengths.dtype == torch.int64 and tokens.dtype == torch.int64
        assert feats.shape[1] == lengths.max() and tokens.shape == (b, token_lengths.max())
        for row, utt_id in enumerate(batch["utt_ids"]):
            i = index[utt_id]
            assert lengths[row] == dataset.lengths[i]
            n = token_lengths[row]
            assert torch.equal(tokens[row, :n], dataset.tokens[i]) and (tokens[row, :n] != PAD_ID).all()
            assert (tokens[row, n:] == PAD_ID).all()
            assert dm.tokenizer.decode(tokens[row].tolist()) == batch["transcripts"][row]
            assert batch["transcripts"][row] == dataset.utterances[i].transcript
            assert (feats[row, lengths[row]:] == 0).all()  # padding after CMVN: exactly zero
            assert feats[row, : lengths[row]].abs().sum(dim=1).gt(0).float().mean() > 0.5
        seen += batch["utt_ids"]
    assert sorted(seen) == sorted(index)  # every training utterance once per epoch


def test_dev_items_are_cmvn_normalized_and_not_augmented(dm):
    dataset = dm.datasets["dev"]
    assert dataset.augment is None and dm.datasets["test"].augment is None
    assert isinstance(dm.datasets["train"].augment, SpecAugment)
    cache = FeatureCache(dm.cache_dir, dm.feature_cfg)
    for i in range(len(dataset)):
        item = dataset[i]
        raw = torch.from_numpy(cache.get(dataset.utterances[i].audio_path))
        assert torch.allclose(item["features"], (raw - dm.cmvn.mean) / dm.cmvn.std)
    train_feats = torch.cat([dm.datasets["train"].cmvn(torch.from_numpy(f)) for f in dm.datasets["train"]._features])
    assert train_feats.mean().abs() < 1e-3 and (train_feats.std(dim=0) - 1).abs().max() < 1e-2


def test_training_items_are_augmented(dm):
    dataset = dm.datasets["train"]
    torch.manual_seed(0)
    masked = [int((dataset[i]["features"] == 0).all(dim=1).sum() + (dataset[i]["features"] == 0).all(dim=0).sum())
              for i in range(len(dataset))]
    assert sum(masked) > 0


def test_eval_loaders_one_per_split_in_order(dm, tiny_corpus, work):
    loaders = dm.val_dataloader()
    assert dm.dev_split_names == ["dev"] and len(loaders) == 1
    two = make_dm(tiny_corpus, work, dev_splits=["test", "dev"], test_splits=["dev"])
    two.prepare_data()
    two.setup("validate")
    assert "train" not in two.datasets  # validation needs no training set
    loaders = two.val_dataloader()
    assert two.dev_split_names == ["test", "dev"] and len(loaders) == 2
    for split, loader in zip(two.dev_split_names, loaders, strict=True):
        ids = [utt for batch in loader for utt in batch["utt_ids"]]
        assert sorted(ids) == sorted(u.utt_id for u in read_split(tiny_corpus, split))
        assert [len(b["utt_ids"]) for b in loader] == [5, 1]  # eval_batch_size
        again = [utt for batch in loader for utt in batch["utt_ids"]]
        assert again == ids  # evaluation order is fixed
    assert len(two.test_dataloader()) == 1
    two.setup("fit")  # Lightning's validate() before fit(): the training set must still appear
    assert "train" in two.datasets and len(list(two.train_dataloader())) == 6


def test_eval_dataloader_and_assets(dm):
    assert [len(b["utt_ids"]) for b in dm.eval_dataloader("test")] == [5, 1]
    with pytest.raises(DataError, match="split 'nope' is not one of the data module's splits"):
        dm.eval_dataloader("nope")
    assets = dm.assets()
    assert assets.tokenizer is dm.tokenizer and assets.features == dm.feature_cfg


def test_no_spec_augment_and_no_preload(tiny_corpus, work):
    module = make_dm(tiny_corpus, work, spec_augment=None, preload=False)
    module.prepare_data()
    module.setup()
    assert module.datasets["train"].augment is None and module.datasets["train"]._features is None
    lengths = [np.load(FeatureCache(module.cache_dir, module.feature_cfg).path_for(u.audio_path)).shape[0]
               for u in module.datasets["train"].utterances]
    assert module.datasets["train"].lengths == lengths


def test_missing_split_in_config(tiny_corpus, work):
    module = make_dm(tiny_corpus, work, dev_splits=["dev-clean"])
    with pytest.raises(DataError, match="directory .*/dev-clean not found.*found: dev, test, train.*data.dev_splits"):
        module.prepare_data()


def test_missing_root_and_bad_tokenizer_keys(tmp_path, work):
    module = make_dm(tmp_path / "nothing", work)
    with pytest.raises(DataError, match="does not exist"):
        module.prepare_data()
    with pytest.raises(DataError, match="does not exist"):
        module.setup("fit")
    with pytest.raises(DataError, match=r"unknown data.tokenizer keys \['size'\]"):
        make_dm(tmp_path, work, tokenizer={"size": 10})


def test_collate_pads_with_zeros():
    items = [{"features": torch.ones(n, 3), "tokens": torch.arange(4, 4 + m), "utt_id": f"u{n}", "transcript": "T"}
             for n, m in ((5, 2), (2, 4))]
    batch = collate(items)
    assert batch["features"].shape == (2, 5, 3) and batch["features"][1, 2:].abs().sum() == 0
    assert batch["feature_lengths"].tolist() == [5, 2] and batch["token_lengths"].tolist() == [2, 4]
    assert batch["tokens"].tolist() == [[4, 5, PAD_ID, PAD_ID], [4, 5, 6, 7]]
    assert batch["utt_ids"] == ["u5", "u2"]


def test_utterance_dataset_with_preload_fills_an_empty_cache(tiny_corpus, tmp_path, dm):
    utts = read_split(tiny_corpus, "dev")
    empty_cache = FeatureCache(tmp_path / "empty", dm.feature_cfg)
    dataset = UtteranceDataset(utts, empty_cache, dm.cmvn, dm.tokenizer, preload=True)
    assert dataset.lengths == dm.datasets["dev"].lengths
    assert all(empty_cache.path_for(u.audio_path).exists() for u in utts)


# -- BucketBatchSampler -----------------------------------------------------------------------------

LENGTHS = np.random.default_rng(0).integers(100, 1000, 203)


def flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def mean_spread(batches) -> float:
    return float(np.mean([LENGTHS[b].max() - LENGTHS[b].min() for b in batches]))


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_yields_every_index_once_in_length_buckets(shuffle):
    sampler = BucketBatchSampler(LENGTHS, 8, shuffle=shuffle, num_replicas=1, rank=0)
    batches = list(sampler)
    assert sorted(flat(batches)) == list(range(len(LENGTHS)))
    assert len(sampler) == len(batches) == 26 and sorted(len(b) for b in batches)[1:] == [8] * 25
    rng = np.random.default_rng(1)
    random_batches = [rng.permutation(len(LENGTHS))[:8] for _ in range(200)]
    assert mean_spread(batches) < 0.3 * mean_spread(random_batches)


def test_training_order_changes_with_the_epoch_and_is_reproducible():
    sampler = BucketBatchSampler(LENGTHS, 8, shuffle=True, seed=3, num_replicas=1, rank=0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(flat(epoch1)) == sorted(flat(epoch0))
    other = BucketBatchSampler(LENGTHS, 8, shuffle=True, seed=3, num_replicas=1, rank=0)
    other.set_epoch(1)
    assert list(other) == epoch1
    assert list(BucketBatchSampler(LENGTHS, 8, shuffle=True, seed=4, num_replicas=1, rank=0)) != epoch0
    batch_lengths = [LENGTHS[b].mean() for b in epoch0]
    assert batch_lengths != sorted(batch_lengths) and batch_lengths != sorted(batch_lengths, reverse=True)


def test_evaluation_order_is_fixed_longest_first():
    sampler = BucketBatchSampler(LENGTHS, 8, shuffle=False, num_replicas=1, rank=0)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    order = flat(first)
    assert list(LENGTHS[order]) == sorted(LENGTHS, reverse=True)


def test_two_replicas_train_on_disjoint_equal_shares():
    ranks = [list(BucketBatchSampler(LENGTHS, 8, shuffle=True, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 26 // 2
    assert not set(flat(ranks[0])) & set(flat(ranks[1]))
    assert len(BucketBatchSampler(LENGTHS, 8, shuffle=True, seed=0, num_replicas=2, rank=1)) == 13
    odd = [list(BucketBatchSampler(LENGTHS[:-8], 8, shuffle=True, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 12  # 25 batches: one dropped so every rank steps equally


def test_two_replicas_evaluate_everything_once():
    ranks = [list(BucketBatchSampler(LENGTHS, 8, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(flat(ranks[0]) + flat(ranks[1])) == list(range(len(LENGTHS)))


def test_sampler_rejects_empty_batches():
    with pytest.raises(DataError, match="batch size must be at least 1"):
        BucketBatchSampler(LENGTHS, 0, shuffle=True)
