"""The small run every pipeline-level test starts from (about 1 s per run with tiny models)."""

from __future__ import annotations

import copy
from typing import Any

TINY_RUN: dict[str, Any] = {
    "name": "unit",
    "data": {"source": "synthetic", "synthetic": {"n_train": 48, "n_dev": 24, "n_test": 8}, "max_length": 48,
             "train_sample_size": 16},
    "teacher": {"model": "tiny-bert", "finetune": {"epochs": 2, "learning_rate": 3.0e-3, "batch_size": 16}},
    "student": {"from_teacher": {"num_layers": 2}, "init": {"strategy": "teacher", "layers": "uniform"}},
    "training": {"epochs": 1, "learning_rate": 1.0e-3, "batch_size": 16, "eval_every": 50, "device": "cpu"},
    "distill": {"temperature": 2.0, "alpha_hard": 0.5, "alpha_soft": 0.5},
}


def tiny_run(name: str = "unit", teacher: str = "tiny-bert") -> dict[str, Any]:
    """A fresh copy of TINY_RUN with another name and teacher model."""
    spec = copy.deepcopy(TINY_RUN)
    spec["name"] = name
    spec["teacher"]["model"] = teacher
    return spec


# A teacher and student that learn a little in a few steps (so F1 values are not all 0), as a study.
TINY_STUDY: dict[str, Any] = {
    "name": "unit_study",
    "data": {"source": "synthetic", "synthetic": {"n_train": 60, "n_dev": 20, "n_test": 20, "seed": 0},
             "max_length": 32, "train_sample_size": 20},
    "teacher": {"model": "tiny-bert", "finetune": {"epochs": 4, "learning_rate": 1.0e-2, "batch_size": 16}},
    "student": {"from_teacher": {"num_layers": 2}},
    "training": {"epochs": 2, "learning_rate": 1.0e-2, "batch_size": 16, "eval_every": 2, "device": "cpu",
                 "num_threads": 1},
    "distill": {"temperature": 2.0, "alpha_hard": 0.5, "alpha_soft": 0.5},
    "study": {"n_trials": 3, "sampler": "random", "sampler_seed": 0,
              "search_space": {"distill.temperature": {"type": "float", "low": 1.0, "high": 8.0}}},
}


def tiny_study(name: str, **study: Any) -> dict[str, Any]:
    """A fresh copy of TINY_STUDY with another name and study settings (n_trials, seeds, ...)."""
    spec = copy.deepcopy(TINY_STUDY)
    spec["name"] = name
    spec["study"].update(study)
    return spec
