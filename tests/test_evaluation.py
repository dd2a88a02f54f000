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


# --------------------------------------------------------------------------- the diagnosis mind-map
TYPES = ["LOC", "MISC", "ORG", "PER"]
RULES = {"overfit_gap": 0.15, "random_floor": 0.05, "underfit_ratio": 0.8}


def _diagnose(dev_f1: float, train_f1: float, predicted_types=TYPES, teacher_f1: float = 0.83) -> tuple[str, str]:
    from distill_lab.diagnosis import diagnose
    from distill_lab.evaluation import Scores

    return diagnose(Scores(f1=dev_f1, precision=dev_f1, recall=dev_f1), train_f1, TYPES, predicted_types,
                    teacher_f1=teacher_f1, **RULES)


@pytest.mark.parametrize("case, dev_f1, train_f1, predicted, label, advice", [
    # shuffled training labels: the student memorises noise, dev F1 near zero
    ("shuffled labels", 0.02, 0.90, TYPES, "near-random", "check and clean the data"),
    # one entity type relabelled O in training: that type is never predicted
    ("LOC relabelled O", 0.61, 0.83, ["MISC", "ORG", "PER"], "label-collapse", "never predicts LOC"),
    # 50 training sentences, many epochs: the sample is learned, dev is not
    ("50 sentences", 0.41, 0.97, TYPES, "overfitting", "bigger student, lower T"),
    # random init, short budget: neither train nor dev near the teacher (83)
    ("random init", 0.26, 0.28, TYPES, "underfitting", "train longer"),
    # a healthy student: train a little above dev, both near the teacher
    ("healthy", 0.745, 0.80, TYPES, "ok", "no issue detected"),
])
def test_diagnose_names_each_induced_failure_with_its_advice(case, dev_f1, train_f1, predicted, label, advice):
    got_label, got_advice = _diagnose(dev_f1, train_f1, predicted)
    assert (got_label, advice in got_advice) == (label, True), case


def test_diagnose_order_and_thresholds():
    assert _diagnose(0.049, 0.02)[0] == "near-random"  # below the floor beats every other symptom
    assert _diagnose(0.30, 0.95, ["PER"])[0] == "label-collapse"  # a missing type before the gap
    assert _diagnose(0.50, 0.66)[0] == "overfitting"  # gap 0.16 > 0.15
    assert _diagnose(0.50, 0.649)[0] == "underfitting"  # gap under, train 0.649 < 0.8 x 0.83 = 0.664
    assert _diagnose(0.60, 0.665)[0] == "ok"  # train just above 0.8 x the teacher
    assert _diagnose(0.30, 0.30, teacher_f1=0.0)[0] == "ok"  # a teacher at 0 F1 sets no bar


def test_diagnose_a_distilled_student_above_its_teacher_blames_the_teacher():
    from distill_lab.diagnosis import diagnose
    from distill_lab.evaluation import Scores

    # mpnet_table_pilot_4l (results/records): teacher 78.75 dev; KD T=10 student 83.96 dev.
    def label(dev_f1: float, distils: bool = True) -> str:
        return diagnose(Scores(f1=dev_f1, precision=dev_f1, recall=dev_f1), 0.90, TYPES, TYPES, teacher_f1=0.7875,
                        distils=distils, **RULES)[0]

    assert label(0.8396) == "weak-teacher"
    assert label(0.8396, distils=False) == "ok"  # a no-KD twin does not learn from the teacher
    assert label(0.7924) == "ok" and label(0.7926) == "weak-teacher"  # half a point of margin
    assert "teacher.finetune" in _diagnose(0.86, 0.95, teacher_f1=0.80)[1]


@pytest.mark.parametrize("case, dev_f1, train_f1, teacher_f1, predicted, label", [
    # The real induced failures of diagnosis_data / diagnosis_overfit (results/records), by the spec's defaults.
    ("shuffled labels (cb570f1c)", 0.0841, 0.1331, 0.0811, ["LOC", "ORG", "PER"], "near-random"),
    ("shuffled labels, class weights (029bac37)", 0.1000, 0.2008, 0.0811, TYPES, "near-random"),
    ("MISC relabelled O (0ca72702)", 0.7347, 0.8197, 0.7596, ["LOC", "ORG", "PER"], "label-collapse"),
    ("50 sentences (6595f3ff)", 0.3317, 0.6859, 0.3656, TYPES, "overfitting"),
    ("clean 2,000 sentences (c37d48c7)", 0.7334, 0.7688, 0.7826, TYPES, "ok"),
])
def test_the_default_rules_name_the_real_induced_failures(case, dev_f1, train_f1, teacher_f1, predicted, label):
    from distill_lab.diagnosis import diagnose
    from distill_lab.evaluation import Scores
    from distill_lab.spec import DiagnosisSpec

    rules = DiagnosisSpec().model_dump()
    got, _ = diagnose(Scores(f1=dev_f1, precision=dev_f1, recall=dev_f1), train_f1, TYPES, predicted,
                      teacher_f1=teacher_f1, **rules)
    assert got == label, case
