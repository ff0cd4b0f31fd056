from asr.data.corpus import list_splits, read_split


def test_tiny_corpus_has_three_splits(tiny_corpus):
    assert list_splits(tiny_corpus) == ["dev", "test", "train"]
    assert len(read_split(tiny_corpus, "train")) == 24
