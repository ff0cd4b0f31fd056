"""compress.options: one canonical form and short name per compression option."""

import pytest

from compress.options import FULL, normalize, option_key, pattern_of, rank_of, sparsity_of


def test_normalize_forms():
    assert normalize(FULL) == FULL
    assert normalize(96) == {"rank": 96}
    assert normalize({"sparsity": 0.8}) == {"sparsity": 0.8, "pattern": "unstructured"}
    assert normalize({"rank": 96.0, "sparsity": 0.123456, "pattern": "4x1"}) == {
        "rank": 96, "sparsity": 0.1235, "pattern": "4x1"}
    assert normalize({"sparsity": 0.0, "pattern": "4x1"}) == FULL
    assert normalize({}) == FULL


@pytest.mark.parametrize("bad", [True, 0.5, "96", {"pattern": "4x1"}])
def test_normalize_refuses(bad):
    with pytest.raises(ValueError):
        normalize(bad)


def test_option_key_names_each_technique():
    assert option_key(FULL) == "full"
    assert option_key(96) == option_key({"rank": 96}) == "r96"
    assert option_key({"sparsity": 0.8}) == "s0.8"
    assert option_key({"sparsity": 0.8, "pattern": "4x1"}) == "s0.8@4x1"
    assert option_key({"rank": 96, "sparsity": 0.5, "pattern": "4x1"}) == "r96+s0.5@4x1"
    assert option_key({"bits": 8}) == "bits=8"


def test_parts():
    option = {"rank": 32, "sparsity": 0.5, "pattern": "4x1"}
    assert (rank_of(option), sparsity_of(option), pattern_of(option)) == (32, 0.5, "4x1")
    assert (rank_of(FULL), sparsity_of(FULL), pattern_of(FULL)) == (FULL, 0.0, "unstructured")
    assert rank_of({"sparsity": 0.9}) == FULL
