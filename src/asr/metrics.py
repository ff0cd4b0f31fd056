"""Word and character error rates with jiwer, accumulated as counts so they can be summed over batches and ranks."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import torch


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> torch.Tensor:
    """``[word errors, reference words, char errors, reference chars]`` (float64) for a batch."""
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return torch.tensor([word_errors, words.substitutions + words.deletions + words.hits,
                         char_errors, chars.substitutions + chars.deletions + chars.hits], dtype=torch.float64)


def rates(counts: torch.Tensor) -> tuple[float, float]:
    """``(WER, CER)`` in percent from summed :func:`error_counts`."""
    return 100.0 * float(counts[0] / counts[1].clamp(min=1)), 100.0 * float(counts[2] / counts[3].clamp(min=1))
