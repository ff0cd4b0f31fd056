"""Loading a trained recognizer back from a Lightning checkpoint, with its front-end assets."""

from __future__ import annotations

from pathlib import Path

import torch

from asr.module import AsrModule


def load_module(path: str | Path, map_location: str = "cpu") -> AsrModule:
    """The :class:`AsrModule` of checkpoint ``path``, in eval mode, with tokenizer/CMVN/features restored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. Fix: train one with 'make baseline' "
                                "(runs/baseline/checkpoints/best.ckpt) or give the path of an existing .ckpt")
    module = AsrModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    if module.assets is None:
        raise ValueError(f"checkpoint {path} carries no tokenizer/CMVN assets; it was not written by shrinkml")
    return module.eval()


def transcribe_features(module: AsrModule, features: list[torch.Tensor], beam_size: int = 0) -> list[str]:
    """Texts of normalized feature matrices ``(T, F)``; ``beam_size`` 0 = greedy."""
    lengths = torch.tensor([f.shape[0] for f in features])
    batch = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    ids = module.model.decode(batch, lengths, beam_size, module.hparams.length_penalty)
    return [module.assets.tokenizer.decode(x) for x in ids]
