"""Reading a training checkpoint file, with one clear line for a missing, damaged or foreign one.

Apart from :mod:`asr.checkpoint` (which builds the Lightning module) so that the light runtime (:mod:`asr.runtime`)
reads checkpoints without importing Lightning.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from common.errors import KnownError

__all__ = ["CheckpointError", "read_checkpoint"]


class CheckpointError(KnownError, ValueError):
    """A checkpoint file that is damaged, not ours, or describes a model this code cannot build."""


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """The checkpoint dictionary at ``path``, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. Fix: train one with 'make baseline' "
                                "(runs/baseline/checkpoints/best.ckpt) or give the path of an existing .ckpt")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is damaged or not a "
                              "PyTorch checkpoint: train again or use another .ckpt") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint of an AsrModule (no state_dict or "
                              "hyper_parameters)")
    return checkpoint
