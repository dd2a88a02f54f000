"""Inference speed, what a student is distilled for: sentences per second, student vs teacher.

Both models read the same sentences (each through its own tokenizer) in batches of 32 in corpus
order, on the run's device and precision, with gradients off, as a user serving the model would.
The timed passes alternate between the models, so a burst of load elsewhere on the machine slows
both rather than one; each model's speed is the median of its passes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Mapping

import torch

from distill_lab.data.align import EncodedSplit
from distill_lab.precision import autocast

BATCH_SIZE = 32


@dataclass(frozen=True)
class Speed:
    """Sentences per second of the student and the teacher on the same sentences."""

    student_sentences_per_s: float
    teacher_sentences_per_s: float
    sentences: int

    @property
    def speedup(self) -> float:
        """How many times faster the student is than its teacher (> 1: faster)."""
        return self.student_sentences_per_s / self.teacher_sentences_per_s

    def metrics(self) -> dict[str, float]:
        return {"student_sentences_per_s": self.student_sentences_per_s,
                "teacher_sentences_per_s": self.teacher_sentences_per_s, "speedup": self.speedup}


def _batches(split: EncodedSplit, sentences: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    count = min(sentences, len(split))
    batches = []
    for start in range(0, count, BATCH_SIZE):
        batch = split.batch(range(start, min(start + BATCH_SIZE, count)))
        batches.append({"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)})
    return batches


def _one_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    started = time.perf_counter()
    for batch in batches:
        model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def measure(student: torch.nn.Module, teacher: torch.nn.Module, student_split: EncodedSplit,
            teacher_split: EncodedSplit, *, sentences: int, device: torch.device, precision: str,
            passes: int = 3) -> Speed | None:
    """Time `passes` forward passes over the first `sentences` sentences of each split, alternating.

    `student_split` and `teacher_split` hold the same sentences in each model's tokenization.
    None when there is nothing to time (no sentences asked for, or an empty split).
    """
    if sentences <= 0 or len(student_split) == 0:
        return None
    models: Mapping[str, tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]] = {
        "student": (student, _batches(student_split, sentences, device)),
        "teacher": (teacher, _batches(teacher_split, sentences, device)),
    }
    was_training = {name: model.training for name, (model, _) in models.items()}
    timings: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode(), autocast(device, precision):
            for model, batches in models.values():  # warm-up: first-call allocations, kernel choice
                model.eval()
                model(**batches[0])
            for _ in range(passes):
                for name, (model, batches) in models.items():
                    timings[name].append(_one_pass(model, batches, device))
    finally:
        for name, (model, _) in models.items():
            model.train(was_training[name])
    count = min(sentences, len(student_split))
    return Speed(student_sentences_per_s=count / statistics.median(timings["student"]),
                 teacher_sentences_per_s=count / statistics.median(timings["teacher"]), sentences=count)
