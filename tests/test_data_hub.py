"""Hugging Face dataset conversion (offline: datasets built in memory)."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from distill_lab.data.corpus import Sentence
from distill_lab.data.hub import load_hub_dataset, splits_from_dataset_dict
from distill_lab.errors import DataError

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _classlabel_split(rows, tag_column="ner_tags"):
    features = Features({
        "id": Value("string"),
        "tokens": Sequence(Value("string")),
        tag_column: Sequence(ClassLabel(names=NAMES)),
    })
    data = {
        "id": [str(i) for i in range(len(rows))],
        "tokens": [r[0] for r in rows],
        tag_column: [r[1] for r in rows],
    }
    return Dataset.from_dict(data, features=features)


def test_splits_from_dataset_dict_maps_classlabels_and_split_names():
    dd = DatasetDict({
        "train": _classlabel_split([(["Ann", "Lee", "runs"], [1, 2, 0]), (["Oslo"], [3])]),
        "validation": _classlabel_split([(["in", "Rome"], [0, 3])]),
        "test": _classlabel_split([(["Bo"], [1])]),
    })
    assert splits_from_dataset_dict(dd) == {
        "train": [
            Sentence(("Ann", "Lee", "runs"), ("B-PER", "I-PER", "O")),
            Sentence(("Oslo",), ("B-LOC",)),
        ],
        "dev": [Sentence(("in", "Rome"), ("O", "B-LOC"))],
        "test": [Sentence(("Bo",), ("B-PER",))],
    }


def test_splits_from_dataset_dict_string_tags_normalised_and_dev_alias():
    def split(rows):
        return Dataset.from_dict({"words": [r[0] for r in rows], "labels": [r[1] for r in rows]})

    dd = DatasetDict({
        "train": split([(["a", "b", "c"], ["S-ORG", "I-LOC", "I-LOC"])]),
        "dev": split([(["d"], ["O"]), ([], [])]),
        "test": split([(["e", "f"], ["B-MISC", "E-MISC"])]),
    })
    out = splits_from_dataset_dict(dd, token_column="words", tag_column="labels")
    assert out["train"] == [Sentence(("a", "b", "c"), ("B-ORG", "B-LOC", "I-LOC"))]
    assert out["dev"] == [Sentence(("d",), ("O",))]  # the empty example is dropped
    assert out["test"] == [Sentence(("e", "f"), ("B-MISC", "I-MISC"))]


def test_splits_from_dataset_dict_rejects_missing_split():
    dd = DatasetDict({
        "train": _classlabel_split([(["a"], [0])]),
        "test": _classlabel_split([(["b"], [0])]),
    })
    with pytest.raises(DataError, match=r"no dev split \(looked for validation, valid, dev\); "
                                        r"available splits: train, test"):
        splits_from_dataset_dict(dd)


def test_splits_from_dataset_dict_rejects_missing_column():
    dd = DatasetDict({s: _classlabel_split([(["a"], [0])]) for s in ("train", "dev", "test")})
    with pytest.raises(DataError, match=r"split 'train': no tag column 'labels'; "
                                        r"available columns: id, tokens, ner_tags"):
        splits_from_dataset_dict(dd, tag_column="labels")


def test_splits_from_dataset_dict_rejects_invalid_string_tag_naming_example():
    def split(tags):
        return Dataset.from_dict({"tokens": [["x"] * len(t) for t in tags], "ner_tags": tags})

    dd = DatasetDict({
        "train": split([["O"], ["O", "PER"]]),
        "validation": split([["O"]]),
        "test": split([["O"]]),
    })
    with pytest.raises(DataError, match=r"split 'train' example 1: invalid tag 'PER'"):
        splits_from_dataset_dict(dd)


def test_splits_from_dataset_dict_rejects_length_mismatch():
    def split(tokens, tags):
        return Dataset.from_dict({"tokens": tokens, "ner_tags": tags})

    dd = DatasetDict({
        "train": split([["a", "b"]], [["O"]]),
        "validation": split([["a"]], [["O"]]),
        "test": split([["a"]], [["O"]]),
    })
    with pytest.raises(DataError, match=r"split 'train' example 0: 2 tokens but 1 tags"):
        splits_from_dataset_dict(dd)


def test_splits_from_dataset_dict_rejects_integer_tags_without_classlabel():
    def split(tags):
        return Dataset.from_dict({"tokens": [["x"] * len(t) for t in tags], "ner_tags": tags})

    dd = DatasetDict({s: split([[0, 1]]) for s in ("train", "validation", "test")})
    with pytest.raises(DataError, match=r"example 0: tag 0 cannot be mapped to a label"):
        splits_from_dataset_dict(dd)


def test_load_hub_dataset_wraps_failures(monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("no route to host\nretry later")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset org/ner "
                                        r"\(config 'en'\): ConnectionError: no route to host "
                                        r"retry later; .*local CoNLL directory") as info:
        load_hub_dataset("org/ner", "en")
    assert "\n" not in str(info.value)


def test_load_hub_dataset_converts_loaded_dataset(monkeypatch):
    import datasets

    calls = []
    split = _classlabel_split([(["Ann"], [1])])
    dd = DatasetDict({s: split for s in ("train", "validation", "test")})

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config))
        return dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = load_hub_dataset("org/ner")
    assert calls == [("org/ner", None)]
    assert out["dev"] == [Sentence(("Ann",), ("B-PER",))]
