"""The one exception hierarchy: the CLI catches DistillLabError and prints one line."""

from __future__ import annotations


class DistillLabError(Exception):
    """Base class for every error caused by user input or the environment, not by a bug."""


class SpecError(DistillLabError):
    """The study spec (or a --set override, or a sampled setting) is invalid."""


class DataError(DistillLabError):
    """A data file or data source is missing, empty or malformed."""


class ModelError(DistillLabError):
    """A model reference cannot be resolved, or weights cannot be copied between models."""


class TrialError(DistillLabError):
    """A single distillation run failed (NaN loss, out of memory, bad sampled combination)."""
