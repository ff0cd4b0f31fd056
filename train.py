"""Train the streaming ASR model: python train.py +experiment=baseline (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from asr.train import train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
