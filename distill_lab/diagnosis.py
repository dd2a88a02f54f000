"""The practitioner's diagnosis mind-map: the first symptom a run's scores show, and its advice.

Torch-free, so that the report can apply the rules its recorded metrics decide without loading a model
stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from distill_lab.evaluation import Scores

# A distilled student this far (F1, 0..1) above its teacher on dev is not seed noise around it.
WEAK_TEACHER_MARGIN = 0.005


def weak_teacher(dev_f1: Any, teacher_f1: Any, distils: Any) -> Any:
    """The weak-teacher rule alone, on floats (a run) or on pandas Series (the report's seed rows)."""
    return distils & (teacher_f1 > 0) & (dev_f1 > teacher_f1 + WEAK_TEACHER_MARGIN)


def diagnose(dev: Scores, train_sample_f1: float, gold_types: Sequence[str], predicted_types: Sequence[str], *,
             teacher_f1: float, overfit_gap: float, random_floor: float, underfit_ratio: float,
             distils: bool = True) -> tuple[str, str]:
    """The practitioner's mind-map: (label, advice), the first symptom that shows, in this order.

    near-random: dev F1 below `random_floor`; label-collapse: a type of the dev set is never
    predicted; overfitting: train-sample F1 more than `overfit_gap` above dev F1; underfitting: the
    student has not even fit its training sample to `underfit_ratio` of the teacher's dev F1;
    weak-teacher: a student that learns from the teacher's outputs on the teacher's own training
    text (`distils`) is above it on dev, so those outputs can only pull it down (seen with an
    under-trained teacher recipe). A student taught on transfer text the teacher never fitted is
    not `distils` here: above its teacher is what KD there is for (lowres_transfer: +0.65 dev).
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
    if weak_teacher(dev.f1, teacher_f1, distils):
        return ("weak-teacher",
                "the student is above its teacher on dev: train the teacher longer or at a higher learning rate "
                "(teacher.finetune), or a stronger teacher; its soft labels can only pull the student down")
    return "ok", "no issue detected"
