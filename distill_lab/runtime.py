"""Process-wide settings every entry point shares: quiet third-party logs."""

from __future__ import annotations

import logging
import os

import optuna
import transformers


def quiet_libraries() -> None:
    """Third-party chatter off: transformers' warnings and bars, Optuna's per-trial info, MLflow's notices."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
