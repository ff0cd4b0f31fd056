"""What a checkpoint needs besides weights to turn audio into text: tokenizer, CMVN, feature settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from asr.data.features import FeatureConfig, GlobalCMVN
from asr.data.tokenizer import Tokenizer


@dataclass
class AsrAssets:
    """Front-end and vocabulary of a model, stored inside its checkpoints (key ``asr_assets``)."""

    tokenizer: Tokenizer
    cmvn: GlobalCMVN
    features: FeatureConfig

    def to_dict(self) -> dict:
        return {"tokenizer_model": self.tokenizer.model_proto, "cmvn_mean": self.cmvn.mean,
                "cmvn_std": self.cmvn.std, "features": asdict(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> AsrAssets:
        return cls(Tokenizer(model_proto=data["tokenizer_model"]),
                   GlobalCMVN(torch.as_tensor(data["cmvn_mean"]), torch.as_tensor(data["cmvn_std"])),
                   FeatureConfig(**data["features"]))
