"""seqeval entity-level scores, per-type F1 and the practitioner's diagnosis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from distill_lab.data.align import EncodedSplit, bucketed_batches, gather_words
from distill_lab.precision import autocast


@dataclass(frozen=True)
class Scores:
    f1: float
    precision: float
    recall: float
    per_type: dict[str, float] = field(default_factory=dict)
    report: str = ""


def score(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Scores:
    """Entity-level micro P/R/F1 and per-type F1, as the CoNLL-2003 `conlleval` script counts them.

    seqeval's default mode is conlleval-compatible (an I-X after O opens an entity); its strict
    IOB2 mode would score the same predictions lower and not match published CoNLL numbers.
    """
    gold, predicted = [list(tags) for tags in gold], [list(tags) for tags in predicted]
    kwargs: dict = dict(zero_division=0)
    report = classification_report(gold, predicted, output_dict=True, **kwargs)
    per_type = {name: float(values["f1-score"]) for name, values in report.items() if "avg" not in name}
    # The micro average of the report IS seqeval's f1/precision/recall_score (same counts, same
    # zero_division): reading it saves three more passes over every sentence, on every eval.
    micro = report.get("micro avg")
    if micro is None:
        micro = {"f1-score": f1_score(gold, predicted, **kwargs),
                 "precision": precision_score(gold, predicted, **kwargs),
                 "recall": recall_score(gold, predicted, **kwargs)}
    return Scores(
        f1=float(micro["f1-score"]),
        precision=float(micro["precision"]),
        recall=float(micro["recall"]),
        per_type=per_type,
        # seqeval's text report fails (max of an empty sequence) when neither side has an entity.
        report=classification_report(gold, predicted, digits=4, **kwargs) if per_type else "no entities\n",
    )


@torch.no_grad()
def predict(model: torch.nn.Module, split: EncodedSplit, labels: Sequence[str], *, batch_size: int = 64,
            device: torch.device | str = "cpu", precision: str = "fp32") -> list[list[str]]:
    """Word-level tags; words cut off by max_length are predicted 'O' (so they count as misses)."""
    was_training = model.training
    model.eval()
    predictions: list[list[str]] = [[] for _ in range(len(split))]
    for indices in bucketed_batches(split.lengths, batch_size, seed=0, epoch=0, shuffle=False):
        batch = split.batch(indices)
        with autocast(device, precision):
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        word_ids = gather_words(logits, batch["word_positions"].to(device)).argmax(-1).cpu()
        for row, index in enumerate(indices):
            n_kept = len(split.encoded[index].word_positions)
            tags = [labels[i] for i in word_ids[row, :n_kept].tolist()]
            predictions[index] = tags + ["O"] * (split.encoded[index].n_words - n_kept)
    model.train(was_training)
    return predictions


def evaluate(model: torch.nn.Module, split: EncodedSplit, labels: Sequence[str], *, batch_size: int = 64,
             device: torch.device | str = "cpu", precision: str = "fp32") -> tuple[Scores, list[list[str]]]:
    predicted = predict(model, split, labels, batch_size=batch_size, device=device, precision=precision)
    gold = [list(sentence.tags or ()) for sentence in split.sentences]
    return score(gold, predicted), predicted


# A distilled student this far (F1, 0..1) above its teacher on dev is not seed noise around it.
WEAK_TEACHER_MARGIN = 0.005


def diagnose(dev: Scores, train_sample_f1: float, gold_types: Sequence[str], predicted_types: Sequence[str], *,
             teacher_f1: float, overfit_gap: float, random_floor: float, underfit_ratio: float,
             distils: bool = True) -> tuple[str, str]:
    """The practitioner's mind-map: (label, advice), the first symptom that shows, in this order.

    near-random: dev F1 below `random_floor`; label-collapse: a type of the dev set is never
    predicted; overfitting: train-sample F1 more than `overfit_gap` above dev F1; underfitting: the
    student has not even fit its training sample to `underfit_ratio` of the teacher's dev F1;
    weak-teacher: a student that learns from the teacher (`distils`) is above it on dev, so the
    teacher's outputs can only pull it down (seen with an under-trained teacher recipe).
    """
    if dev.f1 < random_floor:
        return "near-random", "predictions look random: check and clean the data"
    missing = sorted(set(gold_types) - set(predicted_types))
    if missing:
        return ("label-collapse",
                f"never predicts {', '.join(missing)}: augment the data (data.augment) or reweight minority "
                "classes (distill.class_weights), add transfer data (data.transfer)")
    if train_sample_f1 - dev.f1 > overfit_gap:
        return "overfitting", "train F1 far above dev F1: bigger student, lower T, adjust the intermediate loss"
    if teacher_f1 > 0 and train_sample_f1 < underfit_ratio * teacher_f1:
        return ("underfitting",
                "train F1 far below the teacher: train longer or at a higher learning rate, initialise from the "
                "fine-tuned teacher, add data (data.augment, data.transfer)")
    if distils and teacher_f1 > 0 and dev.f1 > teacher_f1 + WEAK_TEACHER_MARGIN:
        return ("weak-teacher",
                "the student is above its teacher on dev: train the teacher longer or at a higher learning rate "
                "(teacher.finetune), or a stronger teacher; its soft labels can only pull the student down")
    return "ok", "no issue detected"


def entity_types(tag_sequences: Sequence[Sequence[str]]) -> list[str]:
    return sorted({tag[2:] for tags in tag_sequences for tag in tags if tag != "O"})
