#!/usr/bin/env python
"""Write a LibriSpeech-layout corpus as Lhotse manifests (recordings + supervisions, and cuts with cuts=true).

    python scripts/lhotse_manifests.py                         # the embedded corpus -> data/manifests/synthetic_*
    python scripts/lhotse_manifests.py cuts=true data.lhotse.dir=/tmp/manifests
    python scripts/lhotse_manifests.py data=librispeech960 data.root=/data/LibriSpeech

Every split of the data config is read (and checked) first, then written to data.lhotse.dir as
{prefix}_recordings_{split}.{suffix} and {prefix}_supervisions_{split}.{suffix}, with Lhotse's own classes;
train.py and prepare_data.py read them with data.format=lhotse and the same data.lhotse settings.
A corpus it cannot use exits with status 2 and one line naming the file and the fix.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from asr.data.corpus import read_split, split_list
from asr.data.errors import DataError
from common.cli import cli_main


@cli_main("lhotse_manifests", config_path="../conf", config_name="lhotse_manifests")
def main(cfg: DictConfig) -> None:
    from asr.data.lhotse_manifests import write_lhotse_split

    data = cfg.data
    if data.format != "librispeech":
        raise DataError(f"data.format={data.format}: this script reads the LibriSpeech layout under data.root and "
                        "writes the manifests that data.format=lhotse reads. Fix: leave data.format=librispeech")
    splits = dict.fromkeys([*split_list(data.train_split), *data.dev_splits, *data.test_splits])
    utterances = {split: read_split(data.root, split) for split in splits}
    for split, utts in utterances.items():
        paths = write_lhotse_split(utts, data.lhotse.dir, split, data.lhotse.prefix, data.lhotse.suffix,
                                   cuts=cfg.cuts)
        print(f"{split:>16}: {len(utts)} utterances -> {', '.join(p.name for p in paths)}")
    print(f"manifests in {data.lhotse.dir}: read them with data.format=lhotse")


if __name__ == "__main__":
    sys.exit(main())
