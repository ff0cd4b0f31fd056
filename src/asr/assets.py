"""What a checkpoint needs besides weights to turn audio into text: tokenizer, CMVN, feature settings."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

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
        return {"tokenizer_model": self.tokenizer.model_path.read_bytes(), "cmvn_mean": self.cmvn.mean,
                "cmvn_std": self.cmvn.std, "features": asdict(self.features)}

    @classmethod
    def from_dict(cls, data: dict, workdir: str | Path | None = None) -> AsrAssets:
        directory = Path(workdir or tempfile.mkdtemp(prefix="shrinkml-assets-"))
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / "tokenizer.model"
        model_path.write_bytes(data["tokenizer_model"])
        return cls(Tokenizer(model_path), GlobalCMVN(torch.as_tensor(data["cmvn_mean"]),
                                                     torch.as_tensor(data["cmvn_std"])),
                   FeatureConfig(**data["features"]))
