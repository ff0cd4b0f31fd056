"""Loading a trained recognizer back from a Lightning checkpoint, with its front-end assets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from asr.checkpoint_file import CheckpointError, read_checkpoint
from asr.module import AsrModule

Prepare = Callable[[AsrModule, dict], object]


def check_resumable(path: str | Path) -> None:
    """Stop with one line naming ``path`` and the fix when the checkpoint a run resumes from (``ckpt_path``, e.g.
    the ``last.ckpt`` that ``make`` passes by itself after an interruption) is missing, damaged or not ours."""
    try:
        read_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as err:
        cause = err.__cause__
        if isinstance(err, FileNotFoundError):
            reason = "does not exist"
        elif cause is not None:  # torch.load's own message runs over several sentences: its first is enough
            reason = f"is damaged ({type(cause).__name__}: {str(cause).splitlines()[0].split('. ')[0]})"
        else:
            reason = "is not a Lightning checkpoint of an AsrModule"
        raise CheckpointError(f"ckpt_path {path} {reason}: the run cannot resume from it. Fix: delete it to start the "
                              "run afresh, or give ckpt_path= another checkpoint (e.g. checkpoints/best.ckpt)") from err


def load_module(path: str | Path, map_location: str = "cpu", prepare: Prepare | None = None) -> AsrModule:
    """The :class:`AsrModule` of checkpoint ``path``, in eval mode, with tokenizer/CMVN/features restored.

    ``prepare(module, checkpoint)`` runs on the freshly built (dense) module before its weights load:
    the hook through which a caller restores a structure the checkpoint records, such as
    ``compress.checkpoint.restore_compression`` for a compressed model (this package knows nothing of it).
    """
    checkpoint = read_checkpoint(path, map_location)
    try:
        module = AsrModule(**checkpoint["hyper_parameters"])
    except (TypeError, ValueError) as err:  # hyper-parameters of another version of the code
        raise CheckpointError(f"checkpoint {path} describes a model this code cannot build ({err}); train it again "
                              "with this version or load it with the version that wrote it") from err
    module.on_load_checkpoint(checkpoint)
    if module.assets is None:
        raise CheckpointError(f"checkpoint {path} carries no tokenizer/CMVN assets; it was not written by shrinkml")
    if prepare is not None:
        prepare(module, checkpoint)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        hint = "" if prepare is not None else " (a compressed checkpoint? load it with prepare=restore_compression)"
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes{hint}: {err}") from err
    return module.eval().to(map_location)


def transcribe_features(module: AsrModule, features: list[torch.Tensor], beam_size: int | None = None) -> list[str]:
    """Texts of normalized feature matrices ``(T, F)``; ``beam_size`` 0 = greedy, None = the module's
    decoding settings."""
    lengths = torch.tensor([f.shape[0] for f in features])
    batch = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    beam_size = module.decoding["beam_size"] if beam_size is None else beam_size
    ids = module.model.decode(batch, lengths, beam_size, module.decoding["length_penalty"])
    return [module.assets.tokenizer.decode(x) for x in ids]
