"""In-memory NER corpus types, the label inventory, fingerprints and tag-scheme normalisation.

Everything downstream (tokenisation, distillation, evaluation) assumes IOB2 tags, so every
loader funnels its tags through :func:`to_iob2` before building :class:`Sentence` objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from distill_lab.errors import DataError

SCHEMES: tuple[str, ...] = ("auto", "iob1", "iob2", "bioes")
_PREFIXES = frozenset("BIES")


@dataclass(frozen=True)
class Sentence:
    """One tokenised sentence; ``tags`` are IOB2 tags, or None for unlabeled text."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples so instances stay hashable.
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if self.tags is not None:
            object.__setattr__(self, "tags", tuple(self.tags))
            if len(self.tags) != len(self.tokens):
                raise DataError(
                    f"sentence has {len(self.tokens)} tokens but {len(self.tags)} tags: "
                    f"{' '.join(self.tokens[:10])!r}"
                )


@dataclass(frozen=True)
class NerCorpus:
    """Train/dev/test splits plus the label inventory shared by teacher and student."""

    train: tuple[Sentence, ...]
    dev: tuple[Sentence, ...]
    test: tuple[Sentence, ...]
    labels: tuple[str, ...]
    # Unlabeled text used only for the teacher (soft) and intermediate losses.
    transfer: tuple[Sentence, ...] = ()

    @classmethod
    def from_splits(cls, splits: Mapping[str, Iterable[Sentence]]) -> NerCorpus:
        """Build a corpus from a ``{"train", "dev", "test"}`` mapping, deriving ``labels``."""
        missing = [k for k in ("train", "dev", "test") if k not in splits]
        if missing:
            raise DataError(f"corpus splits are missing {missing}; got {sorted(splits)}")
        train, dev, test = (tuple(splits[k]) for k in ("train", "dev", "test"))
        return cls(train=train, dev=dev, test=test, labels=label_list([train, dev, test]))

    def entity_types(self) -> tuple[str, ...]:
        """Entity types in label order (alphabetical), e.g. ``("LOC", "MISC", "ORG", "PER")``."""
        return tuple(label[2:] for label in self.labels if label.startswith("B-"))


def _split_tag(tag: str, where: str) -> tuple[str, str]:
    """Return ``(prefix, type)``; ``("O", "")`` for the outside tag. Raises on malformed tags."""
    if tag == "O":
        return "O", ""
    prefix, sep, etype = tag.partition("-")
    if sep and prefix in _PREFIXES and etype and not any(c.isspace() for c in etype):
        return prefix, etype
    loc = f"{where}: " if where else ""
    raise DataError(
        f"{loc}invalid tag {tag!r}; expected 'O' or one of B-/I-/E-/S- followed by an entity type "
        f"(e.g. 'B-PER')"
    )


def check_tag(tag: str, scheme: str = "auto", *, where: str = "") -> None:
    """Raise DataError if ``tag`` is malformed or not allowed by ``scheme``."""
    _check_scheme(scheme)
    _parse_tag(tag, scheme, where)


def _parse_tag(tag: str, scheme: str, where: str) -> tuple[str, str]:
    """Like :func:`_split_tag`, also rejecting S-/E- under the IOB schemes."""
    prefix, etype = _split_tag(tag, where)
    if prefix in ("E", "S") and scheme in ("iob1", "iob2"):
        loc = f"{where}: " if where else ""
        raise DataError(
            f"{loc}tag {tag!r} is not allowed in scheme {scheme!r} (only O, B-, I-); "
            f"use scheme 'bioes' or 'auto'"
        )
    return prefix, etype


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise DataError(f"unknown tag scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")


def to_iob2(tags: Sequence[str], scheme: str = "auto", *, where: str = "") -> tuple[str, ...]:
    """Normalise one sentence's tags from IOB1, IOB2 or BIOES to IOB2.

    ``auto`` accepts any mix: S-/E- are read as BIOES, and an I-X that opens an entity
    (at the start, after O, or after another type) becomes B-X, which is exactly the
    IOB1 -> IOB2 conversion and also repairs sloppy IOB2. ``iob1``/``iob2`` reject S-/E-.
    """
    _check_scheme(scheme)
    out: list[str] = []
    open_type: str | None = None  # type of the entity that a following I-/E- may continue
    for tag in tags:
        prefix, etype = _parse_tag(tag, scheme, where)
        if prefix == "O":
            out.append("O")
            open_type = None
            continue
        continues = prefix in ("I", "E") and open_type == etype
        out.append(f"{'I' if continues else 'B'}-{etype}")
        # E- and S- close their entity in BIOES, so a following I-X must start a new one.
        open_type = etype if prefix in ("B", "I") else None
    return tuple(out)


def label_list(splits: Iterable[Iterable[Sentence]]) -> tuple[str, ...]:
    """``("O", "B-T1", "I-T1", "B-T2", ...)`` for every entity type in the tags, types sorted."""
    types: set[str] = set()
    for sentences in splits:
        for sentence in sentences:
            for tag in sentence.tags or ():
                prefix, etype = _split_tag(tag, "label_list")
                if prefix != "O":
                    types.add(etype)
    labels = ["O"]
    for etype in sorted(types):
        labels += [f"B-{etype}", f"I-{etype}"]
    return tuple(labels)


def fingerprint(sentences: Iterable[Sentence]) -> str:
    """SHA-256 hex digest of the sentences' tokens and tags, in order.

    JSON (not ``hash()`` or ``repr``) keeps the digest identical across processes and
    Python versions; one line per sentence keeps token boundaries unambiguous.
    """
    digest = hashlib.sha256()
    for sentence in sentences:
        line = json.dumps(
            [list(sentence.tokens), None if sentence.tags is None else list(sentence.tags)],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
