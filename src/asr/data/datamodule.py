"""The LightningDataModule: corpus -> cached features + BPE tokens -> length-bucketed batches.

A batch is a dict:

* ``features``: float32 ``(B, T, n_mels)``, CMVN-normalized (and SpecAugment'ed in training),
  zero-padded;
* ``feature_lengths``: int64 ``(B,)``;
* ``tokens``: int64 ``(B, U)``, padded with ``PAD_ID`` (no start/end ids);
* ``token_lengths``: int64 ``(B,)``;
* ``utt_ids`` and ``transcripts``: lists of ``B`` strings.

Evaluation loaders come one per dev/test split, in the order of ``dev_split_names`` /
``test_split_names``, so metrics can be logged per split.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from asr.assets import AsrAssets
from asr.data.corpus import Utterance, check_root, read_split, split_list
from asr.data.errors import DataError
from asr.data.features import FeatureCache, FeatureConfig, GlobalCMVN, SpecAugment
from asr.data.tokenizer import PAD_ID, Tokenizer

log = logging.getLogger(__name__)


class UtteranceDataset(Dataset):
    """Utterances of one split as (normalized features, token ids) items."""

    def __init__(self, utterances: Sequence[Utterance], cache: FeatureCache, cmvn: GlobalCMVN,
                 tokenizer: Tokenizer, augment: SpecAugment | None = None, preload: bool = False):
        self.utterances = list(utterances)
        self.cache, self.cmvn, self.augment = cache, cmvn, augment
        self.tokens = [torch.tensor(tokenizer.encode(u.transcript), dtype=torch.long) for u in self.utterances]
        self._features = [cache.get(u.audio_path) for u in self.utterances] if preload else None
        if preload:
            self.lengths = [f.shape[0] for f in self._features]
        else:
            self.lengths = [cache.num_frames(u.audio_path) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        raw = self._features[index] if self._features is not None else self.cache.get(utt.audio_path)
        feats = self.cmvn(torch.from_numpy(np.asarray(raw)))
        if self.augment is not None:
            feats = self.augment(feats)
        return {"features": feats, "tokens": self.tokens[index], "utt_id": utt.utt_id, "transcript": utt.transcript}


def collate(items: list[dict]) -> dict:
    """Pad a list of dataset items into one batch (see the module docstring for the layout)."""
    feats = [item["features"] for item in items]
    tokens = [item["tokens"] for item in items]
    return {
        "features": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
        "feature_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
        "tokens": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=PAD_ID),
        "token_lengths": torch.tensor([t.shape[0] for t in tokens], dtype=torch.long),
        "utt_ids": [item["utt_id"] for item in items],
        "transcripts": [item["transcript"] for item in items],
    }


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of utterances of similar length, so little of a batch is padding.

    Training: each epoch sorts by length with a random jitter of up to ``jitter`` (relative),
    cuts consecutive batches and shuffles their order, seeded by ``seed`` and the epoch
    (Lightning calls :meth:`set_epoch`). Evaluation (``shuffle=False``): fixed batches,
    longest first. Under data parallelism each of ``num_replicas`` ranks takes every
    ``num_replicas``-th batch; training batches are truncated to an equal count per rank,
    evaluation keeps every batch (so every utterance is scored once). Every rank needs at least
    one batch (Lightning stops a rank whose loader is empty): an evaluation split of fewer batches
    than ranks is cut into one smaller batch per rank, and a split too small for that is a
    :class:`DataError`. Lightning's own distributed sampler must be off (``use_distributed_sampler: false``).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 jitter: float = 0.1, num_replicas: int | None = None, rank: int | None = None):
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size, self.shuffle, self.seed, self.jitter = batch_size, shuffle, seed, jitter
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            keys = self.lengths * (1 + self.jitter * rng.uniform(-1, 1, len(self.lengths)))
            order = np.argsort(keys, kind="stable")
        else:
            order = np.argsort(-self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            n = self.num_replicas
            if len(order) < n or (self.shuffle and len(batches) < n):
                kind = "training batches" if self.shuffle else "utterances"
                count = len(batches) if self.shuffle else len(order)
                raise DataError(f"a split of {len(order)} utterances gives {count} {kind} for {n} ranks: every rank "
                                "needs one. Fix: use fewer devices (trainer.devices), or a smaller data.batch_size "
                                "for a small training split")
            if not self.shuffle and len(batches) < n:  # e.g. a dev set of one batch: one smaller batch per rank
                batches = [part.tolist() for part in np.array_split(order, n)]
            per_rank = len(batches) // n if self.shuffle else math.ceil(len(batches) / n)
            batches = batches[self.rank :: n][:per_rank]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


WHOLE = {"num_replicas": 1, "rank": 0}
"""Sampler arguments of a loader that yields every batch on this process (no sharding across ranks)."""


class AsrDataModule(L.LightningDataModule):
    """Any LibriSpeech-layout corpus, or any corpus in Lhotse manifests, as training, dev and test dataloaders.

    ``format`` picks the reader of every split: ``librispeech`` reads ``root/SPLIT`` (:mod:`asr.data.corpus`),
    ``lhotse`` the split's manifests in ``lhotse["dir"]`` named by ``lhotse["prefix"]`` and ``lhotse["suffix"]``
    (:mod:`asr.data.lhotse_manifests`); both give utterances whose features come from the same audio files
    through the same :class:`FeatureCache`. ``train_split`` is one split or a list of them, read as one
    concatenated training set (LibriSpeech's 960 h are three); the training set's name, its key in
    :attr:`datasets`, is then the names joined by ``+``.

    ``prepare_data`` (one process) downloads LibriSpeech splits when ``download`` is set,
    trains or reuses the tokenizer, fills the feature cache and computes the CMVN
    statistics; ``setup`` builds the datasets from those files.
    """

    FORMATS = ("librispeech", "lhotse")

    def __init__(
        self,
        root: str,
        train_split: str | Sequence[str],
        dev_splits: Sequence[str],
        test_splits: Sequence[str],
        cache_dir: str,
        features: dict | None = None,
        tokenizer: dict | None = None,
        spec_augment: dict | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        preload: bool = True,
        feature_jobs: int = 0,
        length_jitter: float = 0.1,
        download: bool = False,
        seed: int = 0,
        progress: bool = True,
        format: str = "librispeech",
        lhotse: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.train_splits = split_list(train_split)
        self.train_split = "+".join(self.train_splits)
        if format not in self.FORMATS:
            raise DataError(f"data.format={format!r} is not one of {', '.join(self.FORMATS)}. Fix: set "
                            "data.format=librispeech (the layout under data.root) or lhotse (data.lhotse's manifests)")
        self.format = format
        lhotse = dict(lhotse or {})
        self.lhotse_dir = Path(lhotse.pop("dir", self.root))
        self.lhotse_prefix = str(lhotse.pop("prefix", ""))
        self.lhotse_suffix = str(lhotse.pop("suffix", "jsonl.gz"))
        if lhotse:
            raise DataError(f"unknown data.lhotse keys {sorted(lhotse)}; allowed: dir, prefix, suffix")
        if download and format != "librispeech":
            raise DataError(f"data.download=true fetches the LibriSpeech layout, not data.format={format} manifests. "
                            "Fix: set data.download=false, or data.format=librispeech")
        self.dev_split_names = list(dev_splits)
        self.test_split_names = list(test_splits)
        self.feature_cfg = FeatureConfig(**(features or {}))
        tokenizer = dict(tokenizer or {})
        self.tokenizer_dir = Path(tokenizer.pop("dir", self.root / "tokenizer"))
        self.vocab_size = int(tokenizer.pop("vocab_size", 500))
        self.model_type = tokenizer.pop("model_type", "bpe")
        if tokenizer:
            raise DataError(f"unknown data.tokenizer keys {sorted(tokenizer)}; allowed: dir, vocab_size, model_type")
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        self.cache_dir = Path(cache_dir)
        self.tokenizer: Tokenizer | None = None
        self.cmvn: GlobalCMVN | None = None
        self.datasets: dict[str, UtteranceDataset] = {}

    @property
    def all_splits(self) -> list[str]:
        return list(dict.fromkeys([self.train_split, *self.dev_split_names, *self.test_split_names]))

    # -- reading splits -------------------------------------------------------------------------
    def read(self, split: str) -> list[Utterance]:
        """The utterances of ``split``, or of every training split in order for :attr:`train_split`."""
        if split != self.train_split or len(self.train_splits) == 1:
            return self._read_one(split)
        utterances: list[Utterance] = []
        origin: dict[str, str] = {}
        for name in self.train_splits:
            for utt in self._read_one(name):
                if utt.utt_id in origin:
                    raise DataError(f"utterance id '{utt.utt_id}' is in training splits {origin[utt.utt_id]} and "
                                    f"{name}. Fix: give every utterance its own id, or drop one split from "
                                    "data.train_split")
                origin[utt.utt_id] = name
                utterances.append(utt)
        return utterances

    def _read_one(self, split: str) -> list[Utterance]:
        if self.format == "lhotse":
            from asr.data.lhotse_manifests import read_lhotse_split

            return read_lhotse_split(self.lhotse_dir, split, self.lhotse_prefix, self.lhotse_suffix)
        return read_split(self.root, split)

    # -- preparation (files on disk) ---------------------------------------------------------
    def prepare_data(self) -> None:
        if self.hparams.download:
            self._download()
        utterances = {split: self.read(split) for split in self.all_splits}
        self._load_tokenizer(utterances[self.train_split])
        cache = FeatureCache(self.cache_dir, self.feature_cfg)
        cache.precompute(list(dict.fromkeys(u.audio_path for utts in utterances.values() for u in utts)),
                         jobs=self.hparams.feature_jobs, progress=self.hparams.progress,
                         desc=f"features ({', '.join(utterances)})")
        self._load_cmvn(cache, utterances[self.train_split])

    def _download(self) -> None:
        import torchaudio

        self.root.mkdir(parents=True, exist_ok=True)
        for split in dict.fromkeys([*self.train_splits, *self.dev_split_names, *self.test_split_names]):
            if not (self.root / split).is_dir():
                log.info("downloading LibriSpeech %s into %s", split, self.root)
                torchaudio.datasets.LIBRISPEECH(str(self.root.parent), url=split, folder_in_archive=self.root.name,
                                                download=True)

    def _load_tokenizer(self, train: Sequence[Utterance]) -> Tokenizer:
        if self.tokenizer is None:
            self.tokenizer = Tokenizer.train_or_load([u.transcript for u in train], self.tokenizer_dir,
                                                     self.vocab_size, self.model_type)
        return self.tokenizer

    def _cmvn_path(self, cache: FeatureCache, train: Sequence[Utterance]) -> Path:
        names = "\n".join(str(cache.path_for(u.audio_path)) for u in train)
        return cache.dir / f"cmvn-{hashlib.sha1(names.encode()).hexdigest()[:12]}.npy"

    def _load_cmvn(self, cache: FeatureCache, train: Sequence[Utterance]) -> GlobalCMVN:
        path = self._cmvn_path(cache, train)
        if path.exists():
            return GlobalCMVN.load(path)
        cmvn = GlobalCMVN.fit([cache.get(u.audio_path) for u in train])
        cmvn.save(path)
        return cmvn

    # -- datasets and loaders ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        needed = [split for split in self.all_splits if fit or split != self.train_split]
        if all(split in self.datasets for split in needed):
            return  # already set up for this stage (e.g. "validate" before "fit" still builds the train set)
        if self.format == "librispeech":
            check_root(self.root)
        cache = FeatureCache(self.cache_dir, self.feature_cfg)
        train = self.read(self.train_split)
        tokenizer = self._load_tokenizer(train)
        cmvn = self.cmvn = self._load_cmvn(cache, train)
        preload = self.hparams.preload
        if fit and self.train_split not in self.datasets:
            self.datasets[self.train_split] = UtteranceDataset(train, cache, cmvn, tokenizer, self.spec_augment,
                                                               preload)
        for split in self.all_splits:
            if split not in self.datasets and (split != self.train_split):
                self.datasets[split] = UtteranceDataset(self.read(split), cache, cmvn, tokenizer, None, preload)

    def assets(self) -> AsrAssets:
        """Tokenizer, CMVN statistics and feature settings (after ``setup``), for the model's checkpoints."""
        if self.tokenizer is None or self.cmvn is None:
            raise RuntimeError("call prepare_data() and setup() before assets()")
        return AsrAssets(self.tokenizer, self.cmvn, self.feature_cfg)

    def _loader(self, split: str, train: bool, whole: bool = False) -> DataLoader:
        """``whole``: every batch of the split on this process, whatever the number of ranks (else each
        rank takes its share, as Lightning's own validation and test loops expect)."""
        dataset = self.datasets[split]
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=train, seed=self.hparams.seed,
                                     jitter=self.hparams.length_jitter, **(WHOLE if whole else {}))
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, train=False) for split in self.dev_split_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, train=False) for split in self.test_split_names]

    def eval_dataloader(self, split: str, utt_ids: Sequence[str] | None = None) -> DataLoader:
        """The evaluation loader of any prepared split, or of the utterances ``utt_ids`` of it only
        (the search's proxy sets); an id that is not in the split raises :class:`DataError`.

        It yields the whole split (or list) on every process, also under data parallelism: the stages that
        decode with it (search reports, sensitivity, benchmarks) score every utterance once in one process,
        so their WERs do not depend on the number of ranks."""
        if split not in self.datasets:
            raise DataError(f"split '{split}' is not one of the data module's splits {self.all_splits}")
        if utt_ids is None:
            return self._loader(split, train=False, whole=True)
        full = self.datasets[split]
        index = {u.utt_id: i for i, u in enumerate(full.utterances)}
        missing = [u for u in utt_ids if u not in index]
        if missing:
            raise DataError(f"{len(missing)} utterance(s) of the list are not in split '{split}' of {self.root}, "
                            f"e.g. {missing[:3]}; the list was made for another corpus: rebuild it")
        subset = torch.utils.data.Subset(full, [index[u] for u in utt_ids])
        lengths = [full.lengths[index[u]] for u in utt_ids]
        sampler = BucketBatchSampler(lengths, self.hparams.eval_batch_size, shuffle=False, seed=self.hparams.seed,
                                     jitter=self.hparams.length_jitter, **WHOLE)
        return DataLoader(subset, batch_sampler=sampler, collate_fn=collate, num_workers=0)
