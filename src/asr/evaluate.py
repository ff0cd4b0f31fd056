"""Evaluator: decode a split with a model and score it (docs/architecture.md: ``evaluate(model, split)``).

Returns the corpus WER/CER and per-utterance error counts, so that callers (sensitivity analysis,
the condensed proxy set, the search) can score any subset without decoding again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from asr.data.tokenizer import Tokenizer
from asr.metrics import error_counts, rates
from asr.model.asr_model import AsrModel


@dataclass
class Evaluation:
    """Scores of one decode: corpus WER/CER in percent and per-utterance ``[word errors, words]``."""

    wer: float
    cer: float
    utterances: dict[str, tuple[int, int]] = field(default_factory=dict)
    hypotheses: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: AsrModel, batches: Iterable[dict], tokenizer: Tokenizer, beam_size: int = 0,
             length_penalty: float = 0.0) -> Evaluation:
    """Decode every batch (greedy when ``beam_size`` is 0) and score it against its transcripts."""
    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)
    result = Evaluation(0.0, 0.0)
    try:
        for batch in batches:
            ids = model.decode(batch["features"], batch["feature_lengths"], beam_size, length_penalty)
            texts = [tokenizer.decode(x) for x in ids]
            for utt_id, reference, hypothesis in zip(batch["utt_ids"], batch["transcripts"], texts, strict=True):
                counts = error_counts([reference], [hypothesis])
                total += counts
                result.utterances[utt_id] = (int(counts[0]), int(counts[1]))
                result.hypotheses[utt_id] = hypothesis
    finally:
        model.train(was_training)
    result.wer, result.cer = rates(total)
    return result
