"""Synthetic speaker design: split-disjoint speakers, seen vs unseen voice templates."""

from __future__ import annotations

import pytest

from asr.data.synthetic.speakers import design_speakers, templates

ACCENTS = ["en", "en-US", "en-GB-x-rp", "en-029"]
VARIANTS = ["m1", "m2", "m3", "f1", "f2"]
SIZES = {"train": 12, "dev": 4, "test": 4}


def design(unseen: bool, seed: int = 0, sizes: dict[str, int] = SIZES, accents=ACCENTS, variants=VARIANTS,
           rate=(140, 200), pitch=(25, 75), intonation=(30, 80)):
    return design_speakers(sizes, accents, variants, rate, pitch, intonation, unseen, seed)


def names(speakers) -> set[str]:
    return {s.voice.name for s in speakers}


def test_templates_are_every_accent_variant_pair():
    assert templates(["en", "en-US"], ["m1", "f2"]) == ["en+m1", "en+f2", "en-US+m1", "en-US+f2"]


@pytest.mark.parametrize("unseen", [False, True])
def test_speakers_are_distinct_and_well_formed(unseen):
    speakers = design(unseen)
    assert {split: len(s) for split, s in speakers.items()} == SIZES
    everyone = [s for members in speakers.values() for s in members]
    assert len({s.speaker_id for s in everyone}) == len(everyone)  # no speaker in two splits
    settings = {(s.voice.name, s.voice.rate, s.voice.pitch, s.voice.pitch_range) for s in everyone}
    assert len(settings) == len(everyone)  # every voice setting unique over the corpus
    for s in everyone:
        assert 1000 <= s.speaker_id < 10000 and s.chapter_id == s.speaker_id * 10 + 1
        assert s.sex == ("F" if s.voice.name.split("+")[1].startswith("f") else "M")
        assert 140 <= s.voice.rate <= 200 and 25 <= s.voice.pitch <= 75 and 30 <= s.voice.pitch_range <= 80
        assert s.voice.name in templates(ACCENTS, VARIANTS)


def test_default_design_reuses_train_templates_with_new_prosody():
    speakers = design(unseen=False)
    train = names(speakers["train"])
    train_voices = {s.voice for s in speakers["train"]}
    for split in ("dev", "test"):
        assert names(speakers[split]) <= train
        assert not {s.voice for s in speakers[split]} & train_voices  # same template, other rate/pitch/range


def test_unseen_design_keeps_eval_templates_out_of_train():
    speakers = design(unseen=True)
    train = names(speakers["train"])
    for split in ("dev", "test"):
        assert names(speakers[split]), split
        assert not names(speakers[split]) & train


def test_design_is_seeded():
    assert design(unseen=False, seed=5) == design(unseen=False, seed=5)
    assert design(unseen=False, seed=5) != design(unseen=False, seed=6)


def test_unseen_design_needs_two_templates():
    with pytest.raises(ValueError, match="not enough voice templates"):
        design(unseen=True, accents=["en"], variants=["m1"])


def test_ranges_too_narrow_for_distinct_speakers_raise_instead_of_hanging():
    # one template, 2x1x1 prosody settings, 3 speakers: the draw could never finish
    with pytest.raises(ValueError, match="allow only 2"):
        design(unseen=False, sizes={"train": 2, "dev": 1}, accents=["en"], variants=["m1"],
               rate=(150, 151), pitch=(50, 50), intonation=(50, 50))
    # exactly enough settings still works
    speakers = design(unseen=False, sizes={"train": 2, "dev": 1}, accents=["en"], variants=["m1"],
                      rate=(150, 152), pitch=(50, 50), intonation=(50, 50))
    assert sorted(s.voice.rate for members in speakers.values() for s in members) == [150, 151, 152]
