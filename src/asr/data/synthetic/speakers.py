"""Synthetic speakers: eSpeak voice templates (accent x variant) with their own prosody.

A *template* is an eSpeak voice name ``<accent>+<variant>``; a *speaker* is a template plus
speaking rate, pitch and pitch range. Speakers of different splits are always different
speakers. In the default (learnable) design, dev/test speakers reuse templates that also
speak in train, with new rate/pitch settings, as LibriSpeech's unseen speakers still share
an accent with the training speakers. In the hard design, dev/test templates never occur
in train.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

from asr.data.synthetic.espeak import VoiceSettings


@dataclass(frozen=True)
class Speaker:
    """One speaker of the corpus: LibriSpeech-style integer id, sex tag, voice."""

    speaker_id: int
    chapter_id: int
    sex: str
    voice: VoiceSettings


def templates(accents: list[str], variants: list[str]) -> list[str]:
    """All ``accent+variant`` voice names, in a fixed order."""
    return [f"{accent}+{variant}" for accent in accents for variant in variants]


def design_speakers(
    split_sizes: dict[str, int],
    accents: list[str],
    variants: list[str],
    rate_range: tuple[int, int],
    pitch_range: tuple[int, int],
    intonation_range: tuple[int, int],
    unseen_templates: bool,
    seed: int,
    first_speaker_id: int = 1000,
) -> dict[str, list[Speaker]]:
    """Draw ``split_sizes[split]`` distinct speakers per split.

    The first split is the training split. With ``unseen_templates`` the templates are
    partitioned so that no template of a later split speaks in the first one; otherwise
    later splits draw from the templates the first split uses.
    Every (voice, rate, pitch, range) setting is unique over the whole corpus.
    """
    rng = np.random.default_rng(seed)
    names = list(templates(accents, variants))
    rng.shuffle(names)
    splits = list(split_sizes)
    train_split = splits[0]
    if unseen_templates:
        held_out = max(1, len(names) // 5)
        pools = {train_split: names[held_out:]}
        for split in splits[1:]:
            pools[split] = names[:held_out]
    else:
        train_pool = names[: max(1, min(len(names), split_sizes[train_split]))]
        pools = {split: train_pool for split in splits}
    if any(not pool for pool in pools.values()):
        raise ValueError("not enough voice templates to give every split its own; add accents or variants")
    settings = math.prod(hi - lo + 1 for lo, hi in (rate_range, pitch_range, intonation_range))
    uses = collections.Counter(pools[s][i % len(pools[s])] for s in splits for i in range(split_sizes[s]))
    busiest, needed = uses.most_common(1)[0] if uses else ("", 0)
    if needed > settings:  # the draw below could never find enough distinct settings
        raise ValueError(f"voice template {busiest} needs {needed} distinct rate/pitch/intonation settings but the "
                         f"ranges allow only {settings}; widen rate/pitch/intonation or add accents or variants")

    used: set[tuple] = set()
    speakers: dict[str, list[Speaker]] = {}
    speaker_ids = rng.permutation(9000)[: sum(split_sizes.values())] + first_speaker_id
    next_id = iter(int(i) for i in speaker_ids)
    for split in splits:
        pool = pools[split]
        speakers[split] = []
        for index in range(split_sizes[split]):
            name = pool[index % len(pool)]
            while True:
                voice = VoiceSettings(
                    name=name,
                    rate=int(rng.integers(rate_range[0], rate_range[1] + 1)),
                    pitch=int(rng.integers(pitch_range[0], pitch_range[1] + 1)),
                    pitch_range=int(rng.integers(intonation_range[0], intonation_range[1] + 1)),
                )
                key = (voice.name, voice.rate, voice.pitch, voice.pitch_range)
                if key not in used:
                    used.add(key)
                    break
            speaker_id = next(next_id)
            variant = name.split("+", 1)[1]
            sex = "F" if variant.startswith("f") else "M"
            speakers[split].append(Speaker(speaker_id, speaker_id * 10 + 1, sex, voice))
    return speakers
