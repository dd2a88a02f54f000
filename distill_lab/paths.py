"""Where distill-lab keeps its working files (cached teachers, tiny models, Optuna storage)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """`$DISTILL_LAB_HOME`, else `.distill_lab/` in the working directory."""
    path = Path(os.environ.get("DISTILL_LAB_HOME") or ".distill_lab")
    path.mkdir(parents=True, exist_ok=True)
    return path
