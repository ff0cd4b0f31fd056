"""Sentence source of the generator: text cleaning and the R lazy-load reader (no R, no download)."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from asr.data.synthetic import rdata
from asr.data.synthetic.text import (
    TextSourceError,
    austen_paragraphs,
    filter_length,
    normalize,
    restrict_vocabulary,
    split_sentences,
    text_file_paragraphs,
)

# -- normalize / split_sentences -----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ('Mr. Knightley said "yes," and left.', "MISTER KNIGHTLEY SAID YES AND LEFT"),
    ("Mrs. Weston, Dr. Perry and Col. Brandon met at St. Ives", "MISSUS WESTON DOCTOR PERRY AND COLONEL BRANDON "
                                                                 "MET AT SAINT IVES"),
    ("mr smith", "MISTER SMITH"),
    ("Mistress Smith and Mrsomething", "MISTRESS SMITH AND MRSOMETHING"),  # whole words only
    ("It isn't 'here'; it's there!", "IT ISN'T HERE IT'S THERE"),  # quotes go, apostrophes stay
    ("The boys' house (the old one) -- well-known: _very_ fine?", "THE BOYS HOUSE THE OLD ONE WELL KNOWN VERY FINE"),
    ("\u201cYes,\u201d said he, \u2018quite\u2019 so \u2014 don\u2019t go.", "YES SAID HE QUITE SO DON'T GO"),
    ("  many    spaces\there  ", "MANY SPACES HERE"),
])
def test_normalize_gives_librispeech_style_text(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", ["I have 3 cats.", "In 1811 they met.", "Caf\u00e9 au lait.", "Salt & pepper.",
                                 "50% of them", "", "...", "-- ''"])
def test_normalize_rejects_what_cannot_be_spoken_as_written(raw):
    assert normalize(raw) is None


def test_split_sentences_keeps_abbreviations_and_dedups_in_order():
    paragraphs = ['Mr. Knightley came. "Did he?" she asked! It was 5 o\'clock. Yes.  He did it again; twice.',
                  "Mr. Knightley came. Something new?",
                  "\u201cWere you there?\u201d She was."]
    assert split_sentences(paragraphs) == [
        "MISTER KNIGHTLEY CAME", "DID HE", "SHE ASKED", "YES", "HE DID IT AGAIN TWICE", "SOMETHING NEW",
        "WERE YOU THERE", "SHE WAS",
    ]


def test_restrict_vocabulary_keeps_sentences_of_frequent_words():
    pool = ["THE CAT SAT", "THE CAT RAN", "THE DOG SAT", "A ZEBRA SANG"]
    kept, vocab = restrict_vocabulary(pool, top_words=3)
    assert vocab == ["THE", "CAT", "SAT"]
    assert kept == ["THE CAT SAT"]
    everything, full_vocab = restrict_vocabulary(pool, top_words=None)
    assert everything == pool
    assert full_vocab[:3] == ["THE", "CAT", "SAT"] and set(full_vocab) == {w for s in pool for w in s.split()}


def test_filter_length_bounds_are_inclusive():
    pool = ["ONE TWO", "ONE TWO THREE", "ONE TWO THREE FOUR", "ONE TWO THREE FOUR FIVE"]
    assert filter_length(pool, 3, 4) == ["ONE TWO THREE", "ONE TWO THREE FOUR"]


def test_text_file_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First line\nstill first.\n\n\nSecond one.\n  \nThird\n")
    assert text_file_paragraphs(path) == ["First line still first.", "Second one.", "Third"]
    with pytest.raises(TextSourceError, match="no such file"):
        text_file_paragraphs(tmp_path / "missing.txt")


# -- R XDR serialization (hand-built) --------------------------------------------------------------

NIL = struct.pack(">i", 254)


def _int(v: int) -> bytes:
    return struct.pack(">i", v)


def _charsxp(s: str | None) -> bytes:
    if s is None:
        return _int(9) + _int(-1)  # NA_STRING
    data = s.encode()
    return _int(0x8009) + _int(len(data)) + data  # CHARSXP with the UTF-8 level bit


def _strsxp(values: list[str | None], attrs: bytes = b"") -> bytes:
    return _int(16 | (0x200 if attrs else 0)) + _int(len(values)) + b"".join(map(_charsxp, values)) + attrs


def _intsxp(values: list[int | None]) -> bytes:
    return _int(13) + _int(len(values)) + b"".join(_int(-(2**31) if v is None else v) for v in values)


def _realsxp(values: list[float]) -> bytes:
    return _int(14) + _int(len(values)) + struct.pack(f">{len(values)}d", *values)


def _names_attr(names: list[str], symbol_ref: int | None = None) -> bytes:
    """pairlist(names = c(...)): a tagged LISTSXP; the tag symbol is new or a back-reference."""
    tag = _int((symbol_ref << 8) | 255) if symbol_ref else _int(1) + _charsxp("names")
    return _int(2 | 0x400) + tag + _strsxp(names) + NIL


def _named_list(items: list[bytes], names: list[str], symbol_ref: int | None = None) -> bytes:
    return _int(19 | 0x200) + _int(len(items)) + b"".join(items) + _names_attr(names, symbol_ref)


def _serialize(body: bytes, version: int = 3) -> bytes:
    header = b"X\n" + _int(version) + _int(0x040300) + _int(0x030500)
    if version == 3:
        header += _int(5) + b"UTF-8"
    return header + body


def test_unserialize_character_vector_with_na():
    assert rdata.unserialize(_serialize(_strsxp(["It is a truth", None, "universally acknowledged"]))) == [
        "It is a truth", None, "universally acknowledged"]


def test_unserialize_named_list_with_symbol_back_references():
    inner_a = _named_list([_intsxp([1, None, 3])], ["counts"])  # first "names" symbol: reference 1
    inner_b = _named_list([_realsxp([0.5, -2.0])], ["values"], symbol_ref=1)
    obj = _named_list([inner_a, inner_b], ["a", "b"], symbol_ref=1)
    for version in (2, 3):
        assert rdata.unserialize(_serialize(obj, version)) == {"a": {"counts": [1, None, 3]},
                                                                "b": {"values": [0.5, -2.0]}}


def test_unserialize_rejects_other_formats():
    with pytest.raises(rdata.RDataError, match="XDR"):
        rdata.unserialize(b"A\n" + _serialize(NIL)[2:])
    with pytest.raises(rdata.RDataError, match="version 4"):
        rdata.unserialize(_serialize(NIL, version=4))
    with pytest.raises(rdata.RDataError, match="type 4"):  # an environment
        rdata.unserialize(_serialize(_int(4)))


def test_lazyload_database_feeds_the_austen_reader(tmp_path):
    books = {"persuasion": ["Chapter 1", "", "Sir Walter Elliot, of Kellynch", "Hall, in Somersetshire.", None, "End."],
             "emma": ["Emma Woodhouse, handsome,", "clever, and rich."]}
    blob, index = b"", {}
    for name, lines in books.items():
        raw = _serialize(_strsxp(lines))
        chunk = struct.pack(">i", len(raw)) + zlib.compress(raw)
        index[name] = (len(blob), len(chunk))
        blob += chunk
    variables = _named_list([_intsxp(list(v)) for v in index.values()], list(index))
    rdx = tmp_path / "Rdata.rdx"
    rdx.write_bytes(gzip.compress(_serialize(_named_list([variables], ["variables"]))))
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    assert rdata.read_lazyload_db(rdx) == books
    # books in name order, blank (and NA) lines separate paragraphs
    assert austen_paragraphs(rdx) == ["Emma Woodhouse, handsome, clever, and rich.", "Chapter 1",
                                      "Sir Walter Elliot, of Kellynch Hall, in Somersetshire.", "End."]
    (tmp_path / "Rdata.rdb").unlink()
    with pytest.raises(rdata.RDataError, match="Rdata.rdx"):
        rdata.read_lazyload_db(rdx)
