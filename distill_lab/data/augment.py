"""Label-preserving NER augmentation and unlabeled transfer text: the practitioner's remedies.

Entity-mention swap replaces each mention with another mention of the SAME type seen in the
training data, so the gold tags follow the swap and stay valid IOB2; optional noise replaces some
O tokens with other O tokens. Augmented sentences are distilled against the teacher's soft labels
on the augmented text, like any training sentence.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from distill_lab.data.conll import read_conll
from distill_lab.data.corpus import Sentence
from distill_lab.errors import DataError


def mentions(sentence: Sentence) -> list[tuple[int, int, str]]:
    """(start, end, type) spans of an IOB2 sentence."""
    spans: list[tuple[int, int, str]] = []
    start, kind = None, None
    for position, tag in enumerate(list(sentence.tags or ()) + ["O"]):
        inside = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not inside:
            spans.append((start, position, kind or ""))
            start, kind = None, None
        if tag.startswith("B-") or (tag.startswith("I-") and start is None):
            start, kind = position, tag[2:]
    return spans


def mention_lexicon(sentences: Sequence[Sentence]) -> dict[str, list[tuple[str, ...]]]:
    """Every distinct mention per entity type, in first-seen order (deterministic)."""
    lexicon: dict[str, list[tuple[str, ...]]] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for sentence in sentences:
        for start, end, kind in mentions(sentence):
            surface = sentence.tokens[start:end]
            if (kind, surface) not in seen:
                seen.add((kind, surface))
                lexicon.setdefault(kind, []).append(surface)
    return lexicon


def swap_entities(sentence: Sentence, lexicon: dict[str, list[tuple[str, ...]]], rng: random.Random, *,
                  o_noise: float = 0.0, o_vocabulary: Sequence[str] = ()) -> Sentence:
    """One augmented copy: every mention swapped for a same-type mention, some O tokens replaced."""
    tokens: list[str] = []
    tags: list[str] = []
    cursor = 0
    for start, end, kind in mentions(sentence):
        for position in range(cursor, start):
            tokens.append(_noisy(sentence.tokens[position], rng, o_noise, o_vocabulary))
            tags.append("O")
        replacement = rng.choice(lexicon.get(kind) or [sentence.tokens[start:end]])
        tokens.extend(replacement)
        tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(replacement) - 1))
        cursor = end
    for position in range(cursor, len(sentence.tokens)):
        tokens.append(_noisy(sentence.tokens[position], rng, o_noise, o_vocabulary))
        tags.append("O")
    return Sentence(tuple(tokens), tuple(tags))


def _noisy(token: str, rng: random.Random, probability: float, vocabulary: Sequence[str]) -> str:
    if probability > 0 and vocabulary and rng.random() < probability:
        return rng.choice(vocabulary)
    return token


def augment(sentences: Sequence[Sentence], *, copies: int, seed: int, o_noise: float = 0.0) -> list[Sentence]:
    """`copies` augmented sentences per sentence that has at least one mention (seeded)."""
    if copies < 0:
        raise DataError(f"data.augment.copies must be >= 0 but got {copies}")
    if copies == 0:
        return []
    lexicon = mention_lexicon(sentences)
    o_vocabulary = sorted({token for s in sentences for token, tag in zip(s.tokens, s.tags or ()) if tag == "O"
                           and token.isalpha() and token.islower()})
    rng = random.Random(seed)
    out: list[Sentence] = []
    for sentence in sentences:
        if sentence.tags is None or not mentions(sentence):
            continue
        out.extend(swap_entities(sentence, lexicon, rng, o_noise=o_noise, o_vocabulary=o_vocabulary)
                   for _ in range(copies))
    return out


def read_unlabeled(path: Path) -> list[Sentence]:
    """Raw text for the teacher: one sentence per line (split on whitespace), or CoNLL without tags."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.transfer.path {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"data.transfer.path {path}: not a UTF-8 text file") from None
    lines = text.splitlines()
    non_blank = [line for line in lines if line.strip()]
    if not non_blank:
        raise DataError(f"data.transfer.path {path}: the file is empty")
    # CoNLL without tags: one token per line and blank lines between sentences.
    one_token_lines = sum(1 for line in non_blank if len(line.split()) == 1)
    if one_token_lines / len(non_blank) > 0.9 and len(non_blank) < len(lines):
        return [Sentence(s.tokens, None) for s in read_conll(path, labeled=False)]
    return [Sentence(tuple(line.split()), None) for line in non_blank if not line.startswith("-DOCSTART-")]
