"""Induced failures (`data.corrupt`): what each corruption does to the training split, and that the
diagnosis names the failure it induces on a real (tiny) run."""

from __future__ import annotations

from collections import Counter

import pytest

from distill_lab.data.corpus import Sentence
from distill_lab.data.corpus import to_iob2
from distill_lab.data.corrupt import corrupt, drop_types
from distill_lab.data.loader import load_corpus
from distill_lab.data.synthetic import generate_corpus
from distill_lab.errors import DataError, SpecError
from distill_lab.naming import setting
from distill_lab.spec import CorruptSpec, DataSpec, parse_spec, resolve
from tiny_specs import tiny_study


def _types(sentences) -> Counter:
    return Counter(tag[2:] for s in sentences for tag in (s.tags or ()) if tag.startswith("B-"))


def test_drop_types_relabels_every_tag_of_the_type_and_nothing_else():
    tags = ("B-PER", "I-PER", "O", "B-MISC", "I-MISC", "B-LOC")
    assert drop_types(tags, ["MISC"]) == ("B-PER", "I-PER", "O", "O", "O", "B-LOC")
    assert drop_types(tags, []) == tags


def test_shuffled_tags_are_repaired_by_the_corpus_iob2_normaliser():
    assert to_iob2(("I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG")) == (
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG")


def test_corrupt_drops_a_type_from_training_only_and_keeps_the_words():
    train = generate_corpus(n_train=120, n_dev=1, n_test=1, seed=2)["train"]
    kind = _types(train).most_common(1)[0][0]
    out = corrupt(train, CorruptSpec(drop_types=(kind,)))
    assert [s.tokens for s in out] == [s.tokens for s in train]
    assert kind not in _types(out)
    others = {k: v for k, v in _types(train).items() if k != kind}
    assert dict(_types(out)) == others


def test_shuffle_labels_permutes_the_chosen_fraction_deterministically():
    train = generate_corpus(n_train=200, n_dev=1, n_test=1, seed=4)["train"]
    spec = CorruptSpec(shuffle_labels=0.5, seed=3)
    first, again = corrupt(train, spec), corrupt(train, spec)
    assert first == again
    assert first != corrupt(train, CorruptSpec(shuffle_labels=0.5, seed=4))
    changed = [(a, b) for a, b in zip(train, first) if a.tags != b.tags]
    # Half the sentences were shuffled; a shuffle that changes nothing (all O, one tag) is possible.
    assert 0.3 * len(train) < len(changed) <= 0.5 * len(train)
    for before, after in changed:
        # The same tags up to the B-/I- repair, now at other positions, and valid IOB2.
        assert sorted(t[2:] for t in before.tags) == sorted(t[2:] for t in after.tags)
        assert to_iob2(after.tags) == after.tags


def test_load_corpus_corrupts_train_keeps_dev_test_and_the_label_inventory():
    clean = load_corpus(DataSpec(source="synthetic"))
    kind = _types(clean.train).most_common(1)[0][0]
    dirty = load_corpus(DataSpec(source="synthetic", corrupt=CorruptSpec(drop_types=(kind,))))
    assert dirty.dev == clean.dev and dirty.test == clean.test
    assert dirty.labels == clean.labels  # the type is still a label (dev has it): the model has its head
    assert kind not in _types(dirty.train)


def test_unknown_type_and_empty_corruption_are_one_line_errors():
    with pytest.raises(DataError, match=r"drop_types: \['NOPE'\] not in the training labels"):
        corrupt([Sentence(("a",), ("B-PER",))], CorruptSpec(drop_types=("NOPE",)))
    with pytest.raises(ValueError, match="set drop_types and/or shuffle_labels"):
        CorruptSpec()
    with pytest.raises(ValueError, match="bare names"):
        CorruptSpec(drop_types=("B-PER",))


def test_the_setting_name_says_what_was_corrupted():
    spec = tiny_study("corrupt_name")
    spec["data"]["corrupt"] = {"drop_types": ["LOC"], "shuffle_labels": 0.25}
    assert setting(resolve(parse_spec(spec))).endswith("drop=LOC shuffled=0.25")
    spec["data"]["corrupt"] = {"drop_types": []}
    with pytest.raises(SpecError, match="set drop_types"):
        parse_spec(spec)


def _learning_run(name: str) -> dict:
    spec = tiny_study(name)  # enough data and steps that the clean run predicts every type
    spec["data"]["synthetic"]["n_train"] = 200
    spec["training"] |= {"epochs": 4, "learning_rate": 5.0e-3}
    spec["teacher"]["finetune"]["learning_rate"] = 5.0e-3
    return spec


def test_a_dropped_type_is_diagnosed_as_label_collapse_on_a_real_run():
    from distill_lab.pipeline import run_distillation

    def predicted(result) -> set[str]:
        return {tag[2:] for tags in result.dev_predictions for tag in tags if tag != "O"}

    clean = run_distillation(resolve(parse_spec(_learning_run("corrupt_clean"))))
    assert predicted(clean) == {"LOC", "MISC", "ORG", "PER"}
    assert clean.diagnosis != "label-collapse"
    spec = _learning_run("corrupt_run")
    spec["data"]["corrupt"] = {"drop_types": ["LOC"]}
    dropped = run_distillation(resolve(parse_spec(spec)))
    assert dropped.teacher.fingerprint != clean.teacher.fingerprint  # the teacher learns the same corrupted split
    assert predicted(dropped) == {"MISC", "ORG", "PER"}
    assert dropped.diagnosis == "label-collapse"
    assert "never predicts LOC" in dropped.advice
