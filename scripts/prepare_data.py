#!/usr/bin/env python
"""Prepare a corpus for training: tokenizer, feature cache and CMVN statistics.

    python scripts/prepare_data.py                              # the embedded corpus
    python scripts/prepare_data.py data=librispeech data.root=/data/LibriSpeech
    python scripts/prepare_data.py data=librispeech960 data.root=/data/LibriSpeech   # the 960 h (three splits)
    python scripts/prepare_data.py data.format=lhotse                         # Lhotse manifests (docs/data.md)

Everything it writes is reused by train.py; running it again does only what is missing.
A corpus or data config it cannot use exits with status 2 and one line naming the file or key and the fix
(as scripts/check_corpus.py does).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from common.cli import cli_main


@cli_main("prepare_data", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    for split, dataset in datamodule.datasets.items():
        frames = sum(dataset.lengths)
        print(f"{split:>16}: {len(dataset)} utterances, {frames} frames, "
              f"{sum(len(t) for t in dataset.tokens) / len(dataset):.1f} tokens/utt")
    print(f"tokenizer: {datamodule.tokenizer.model_path} ({datamodule.tokenizer.vocab_size} pieces)")


if __name__ == "__main__":
    sys.exit(main())
