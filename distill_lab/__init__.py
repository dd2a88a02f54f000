"""distill-lab: sweeps of knowledge distillation for BERT-like token classifiers.

The public Python API (docs/api.md): `load_spec`, `run`, `run_study`, `report`, `export`, `load_student`,
and `DistillLabError`. They are loaded on first use, so `import distill_lab` (and the CLI's
`--help`) does not import torch, transformers or MLflow.
"""

from __future__ import annotations

from typing import Any

from distill_lab.errors import DistillLabError

__version__ = "0.1.0"
__all__ = ["DistillLabError", "export", "load_spec", "load_student", "report", "run", "run_study"]
_API = frozenset(__all__) - {"DistillLabError"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from distill_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'distill_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
