"""Train the streaming ASR model: python train.py +experiment=baseline (see conf/train.yaml)."""

import sys

from omegaconf import DictConfig

from asr.train import train
from common.cli import cli_main


@cli_main("train", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    sys.exit(main())
