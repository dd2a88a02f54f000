"""seqeval entity-level scores and per-type F1 (the diagnosis they feed: distill_lab.diagnosis)."""

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


def entity_types(tag_sequences: Sequence[Sequence[str]]) -> list[str]:
    return sorted({tag[2:] for tags in tag_sequences for tag in tags if tag != "O"})
