"""seqeval scoring: hand-counted golden values, and the one-pass micro average equals seqeval's own scores."""

from __future__ import annotations

import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from distill_lab.evaluation import score


def test_score_counts_entities_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold: PER, LOC, ORG; predicted: PER, ORG, ORG; correct: PER and the second sentence's ORG.
    scores = score(gold, predicted)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.per_type == pytest.approx({"PER": 1.0, "LOC": 0.0, "ORG": 2 / 3})
    assert "PER" in scores.report and "micro avg" in scores.report


def test_score_counts_an_i_tag_after_o_as_an_entity_like_conlleval():
    scores = score([["O", "B-PER"]], [["O", "I-PER"]])
    assert scores.f1 == 1.0


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")  # seqeval's numpy
def test_score_without_any_entity_is_zero_not_an_error():
    scores = score([["O", "O"]], [["O", "O"]])
    assert (scores.f1, scores.precision, scores.recall, scores.per_type) == (0.0, 0.0, 0.0, {})


@pytest.mark.parametrize("seed", range(40))
def test_score_micro_average_equals_seqeval_scores(seed):
    rng = random.Random(seed)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-MISC"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 20))]
    predicted = [[rng.choice(tags) if rng.random() < 0.5 else tag for tag in sentence] for sentence in gold]
    if seed % 5 == 0:  # a collapsed model that predicts no entity at all
        predicted = [["O"] * len(sentence) for sentence in gold]
    scores = score(gold, predicted)
    assert scores.f1 == f1_score(gold, predicted, zero_division=0)
    assert scores.precision == precision_score(gold, predicted, zero_division=0)
    assert scores.recall == recall_score(gold, predicted, zero_division=0)
