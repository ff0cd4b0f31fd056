"""BPE sub-word tokenizer (sentencepiece), trained on the training transcripts and reused.

Ids: 0 = padding (also the CTC blank), 1 = unknown, 2 = start of sentence, 3 = end of
sentence; pieces follow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from asr.data.errors import DataError
from common.atomic import write_bytes_atomic, write_json_atomic

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Text <-> token ids with a trained sentencepiece model."""

    def __init__(self, model_path: str | Path | None = None, model_proto: bytes | None = None):
        """Load a sentencepiece model from ``model_path``, or from its serialized bytes ``model_proto``
        (as stored in checkpoints)."""
        self.model_path = Path(model_path) if model_path is not None else None
        if model_proto is None:
            if self.model_path is None or not self.model_path.is_file():
                raise DataError(f"tokenizer model {self.model_path} not found. Fix: run 'make data' (or "
                                "'python scripts/prepare_data.py'), which trains it from the training transcripts")
            model_proto = self.model_path.read_bytes()
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ids included."""
        return self.sp.get_piece_size()

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def encode(self, text: str) -> list[int]:
        """Token ids of an upper-case transcript (no start/end ids added)."""
        return self.sp.encode(text.lower(), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Upper-case transcript of ``ids``; padding, start and end ids are dropped."""
        kept = [int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)]
        return self.sp.decode(kept).upper()

    @classmethod
    def train_or_load(cls, transcripts: Sequence[str], model_dir: str | Path, vocab_size: int,
                      model_type: str = "bpe", config_key: str = "data.tokenizer.vocab_size") -> Tokenizer:
        """The tokenizer for these training ``transcripts``: reused from ``model_dir`` when it
        was trained on the same text with the same settings, trained (and saved atomically) otherwise.

        A ``vocab_size`` the text cannot fill raises :class:`DataError` naming ``config_key``
        and the largest size that fits.
        """
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        name = f"{model_type}{vocab_size}"
        model_path, meta_path = model_dir / f"{name}.model", model_dir / f"{name}.json"
        text = "\n".join(t.lower() for t in transcripts) + "\n"
        meta = {"vocab_size": vocab_size, "model_type": model_type,
                "text_sha1": hashlib.sha1(text.encode()).hexdigest(), "sentences": len(transcripts)}
        if model_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
            return cls(model_path)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID,
                eos_id=EOS_ID, input_sentence_size=2_000_000, shuffle_input_sentence=True,
                minloglevel=2, num_threads=os.cpu_count() or 1,
            )
        except RuntimeError as err:
            match = re.search(r"<= (\d+)", str(err))
            if "Vocabulary size" in str(err) or match:
                limit = f"at most {match.group(1)}" if match else "fewer"
                raise DataError(f"{config_key}={vocab_size} is too large for the training transcripts "
                                f"({len(transcripts)} sentences): {limit} pieces fit. Fix: set "
                                f"{config_key} to {limit.replace('at most ', '')} or less") from err
            raise
        write_bytes_atomic(model_path, model.getvalue())
        write_json_atomic(meta_path, meta)
        return cls(model_path)
