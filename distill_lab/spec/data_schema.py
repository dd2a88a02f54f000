"""The data section's sub-specs: synthetic corpus, transfer text, augmentation, induced failures."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from distill_lab.spec.base import Model as _Model


class SyntheticSpec(_Model):
    n_train: int = Field(600, ge=1)
    n_dev: int = Field(200, ge=1)
    n_test: int = Field(200, ge=1)
    seed: int = 0


class TransferSpec(_Model):
    """Extra unlabeled sentences used only for the teacher (soft) and intermediate losses."""

    path: str | None = None
    from_train_remainder: bool = False
    max_sentences: int | None = Field(None, ge=1)
    ratio: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> "TransferSpec":
        if bool(self.path) == self.from_train_remainder:
            raise ValueError("set exactly one of 'path' or 'from_train_remainder: true'")
        return self


class AugmentSpec(_Model):
    """Entity-mention swap (same-type mentions from the training data), optional O-token noise."""

    copies: int = Field(1, ge=0)
    o_noise: float = Field(0.0, ge=0, le=1)
    seed: int = 0


class CorruptSpec(_Model):
    """Induced failures, applied to the training split only (dev and test stay clean).

    The diagnosis's test bench: `drop_types` relabels every mention of those entity types O (a
    type the model never learns: label collapse); `shuffle_labels` gives that fraction of the
    training sentences their own tags in a random order (repaired to valid IOB2): near-random
    labels. The teacher is fine-tuned on the same corrupted split (its fingerprint follows it).
    """

    drop_types: tuple[str, ...] = ()
    shuffle_labels: float = Field(0.0, ge=0, le=1)
    seed: int = 0

    @field_validator("drop_types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in value if not t or "-" in t]
        if bad:
            raise ValueError(f"entity types are bare names such as MISC or PER, not tags: {bad}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _something(self) -> "CorruptSpec":
        if not self.drop_types and not self.shuffle_labels:
            raise ValueError("set drop_types and/or shuffle_labels > 0 (or leave data.corrupt out)")
        return self
