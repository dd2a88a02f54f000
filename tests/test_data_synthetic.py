"""Built-in synthetic NER corpus."""

from __future__ import annotations

from collections import defaultdict

import pytest

from distill_lab.data.corpus import NerCorpus, fingerprint, to_iob2
from distill_lab.data.synthetic import generate_corpus
from distill_lab.errors import DataError


def _entity_types_by_token(splits):
    types = defaultdict(set)
    for sentences in splits.values():
        for s in sentences:
            for token, tag in zip(s.tokens, s.tags):
                if tag != "O":
                    types[token].add(tag[2:])
    return types


def test_generate_corpus_sizes_and_keys():
    splits = generate_corpus(n_train=30, n_dev=7, n_test=0, seed=3)
    assert list(splits) == ["train", "dev", "test"]
    assert [len(v) for v in splits.values()] == [30, 7, 0]
    assert [len(v) for v in generate_corpus().values()] == [600, 200, 200]


def test_generate_corpus_is_deterministic_per_seed():
    a, b = generate_corpus(seed=5), generate_corpus(seed=5)
    assert a == b
    c = generate_corpus(seed=6)
    for split in ("train", "dev", "test"):
        assert fingerprint(a[split]) != fingerprint(c[split])


def test_generate_corpus_splits_use_independent_streams():
    small, large = generate_corpus(n_train=10, seed=1), generate_corpus(n_train=50, seed=1)
    assert small["dev"] == large["dev"] and small["test"] == large["test"]
    assert large["train"][:10] == small["train"]
    # Different streams: dev does not simply replay train.
    assert large["train"][:20] != large["dev"][:20]


def test_generate_corpus_sentences_are_valid_iob2_and_in_length_range():
    splits = generate_corpus(seed=0)
    for sentences in splits.values():
        for s in sentences:
            assert 5 <= len(s.tokens) <= 25
            assert len(s.tags) == len(s.tokens)
            assert all(t and not t.isspace() and " " not in t for t in s.tokens)
            # Already IOB2: normalising changes nothing, and no BIOES prefixes appear.
            assert to_iob2(s.tags, "iob2") == s.tags
            assert s.tokens[0][0].isupper() or not s.tokens[0][0].isalpha()


def test_generate_corpus_has_all_types_and_multi_token_mentions():
    splits = generate_corpus(seed=0)
    corpus = NerCorpus.from_splits(splits)
    assert corpus.entity_types() == ("LOC", "MISC", "ORG", "PER")
    train_tags = {t for s in splits["train"] for t in s.tags}
    assert train_tags == set(corpus.labels)  # every I- label occurs, not only B-


def test_generate_corpus_has_context_dependent_ambiguity():
    types = _entity_types_by_token(generate_corpus(seed=0))
    ambiguous = {tok for tok, ts in types.items() if len(ts) >= 2}
    assert {"Jordan", "Washington", "Paris", "Georgia", "Ford"} <= ambiguous
    assert {"PER", "LOC"} <= types["Jordan"]
    assert {"PER", "ORG"} <= types["Ford"]
    # Shared non-name tokens across types, e.g. New York (LOC) / New York Times (ORG).
    assert {"LOC", "ORG"} <= types["New"]


def test_generate_corpus_has_capitalised_outside_words_at_sentence_start():
    splits = generate_corpus(seed=0)
    starts = {s.tokens[0] for s in splits["train"] if s.tags[0] == "O" and s.tokens[0][0].isupper()}
    assert len(starts) >= 10
    assert "However" in starts or "Meanwhile" in starts


@pytest.mark.parametrize("kwargs", [{"n_train": -1}, {"n_dev": 2.5}, {"n_test": True}])
def test_generate_corpus_rejects_bad_sizes(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(DataError, match=rf"{name} must be an integer >= 0, got {value!r}"):
        generate_corpus(**kwargs)
