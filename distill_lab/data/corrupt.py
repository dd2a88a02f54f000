"""Induced failures on the training split: the test bench of the diagnosis (`data.corrupt`).

Each corruption mimics a data problem the practitioner's mind-map names: an entity type missing
from the labels (label collapse) and labels unrelated to the words (near-random). Both act on the
training sentences only, deterministically for a seed; dev and test stay clean, so the scores say
how the failure shows on clean data.
"""

from __future__ import annotations

import random
from typing import Sequence

from distill_lab.data.corpus import Sentence, to_iob2
from distill_lab.errors import DataError
from distill_lab.spec import CorruptSpec


def drop_types(tags: Sequence[str], types: Sequence[str]) -> tuple[str, ...]:
    """Every B-/I- tag of `types` becomes O."""
    return tuple("O" if tag != "O" and tag[2:] in types else tag for tag in tags)


def corrupt(sentences: Sequence[Sentence], spec: CorruptSpec) -> list[Sentence]:
    """The training sentences with `spec`'s failures induced (the same output for the same seed)."""
    present = {tag[2:] for s in sentences for tag in (s.tags or ()) if tag != "O"}
    unknown = [t for t in spec.drop_types if t not in present]
    if unknown:
        raise DataError(f"data.corrupt.drop_types: {unknown} not in the training labels "
                        f"(entity types there: {', '.join(sorted(present)) or 'none'})")
    rng = random.Random(spec.seed)
    shuffled = set(rng.sample(range(len(sentences)), round(spec.shuffle_labels * len(sentences))))
    out: list[Sentence] = []
    for index, sentence in enumerate(sentences):
        tags = list(sentence.tags or ())
        if not tags:
            out.append(sentence)
            continue
        tags = list(drop_types(tags, spec.drop_types))
        if index in shuffled:
            rng.shuffle(tags)
            tags = list(to_iob2(tags))  # an I-X moved away from its B-X opens a mention instead
        out.append(Sentence(sentence.tokens, tuple(tags)))
    return out
