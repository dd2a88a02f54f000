"""Tokenisation with word-label alignment, padding-aware collation and length-bucketed batches.

Labels live at the word level: each word is represented by its FIRST sub-token (the other
sub-tokens get no label), so models with different tokenizers still agree on positions.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from distill_lab.data.corpus import Sentence
from distill_lab.errors import DataError

IGNORE_INDEX = -100  # torch's cross-entropy default ignore_index


def label_index(labels: tuple[str, ...]) -> dict[str, int]:
    """Label -> class id, in the corpus's label order (the classifier's output order)."""
    return {label: index for index, label in enumerate(labels)}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSentence:
    input_ids: tuple[int, ...]
    word_positions: tuple[int, ...]  # token position of each kept word's first sub-token
    labels: tuple[int, ...]  # one per kept word; IGNORE_INDEX for unlabeled (transfer) text
    n_words: int  # words in the sentence, including those cut off by max_length


class EncodedSplit:
    """A split tokenised for one tokenizer: encoded sentences plus their originals."""

    def __init__(self, sentences: Sequence[Sentence], encoded: Sequence[EncodedSentence], pad_id: int):
        self.sentences = list(sentences)
        self.encoded = list(encoded)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def lengths(self) -> list[int]:
        return [len(example.input_ids) for example in self.encoded]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return collate([self.encoded[i] for i in indices], self.pad_id, indices)


def encode_sentences(sentences: Sequence[Sentence], tokenizer: Any, label2id: Mapping[str, int],
                     max_length: int) -> EncodedSplit:
    """Tokenise pre-split words and align labels to first sub-tokens (truncating at max_length)."""
    if not sentences:
        return EncodedSplit([], [], tokenizer.pad_token_id or 0)
    words = [list(sentence.tokens) for sentence in sentences]
    encoded_batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    if _drops_words(encoded_batch, words, max_length):  # rare: only then the per-word check and a second pass
        words = _tokenizable_words(words, tokenizer)
        encoded_batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    encoded: list[EncodedSentence] = []
    for index, sentence in enumerate(sentences):
        word_ids = encoded_batch.word_ids(index)
        positions: list[int] = []
        seen: set[int] = set()
        for position, word_id in enumerate(word_ids):
            if word_id is not None and word_id not in seen:
                seen.add(word_id)
                positions.append(position)
        kept = len(positions)
        # A word the tokenizer drops entirely (e.g. a lone control character) would shift labels.
        if sorted(seen) != list(range(kept)):
            raise DataError(
                f"sentence {index}: the tokenizer produced no token for some words "
                f"({' '.join(sentence.tokens)[:80]!r}); clean the data"
            )
        if sentence.tags is None:
            labels = (IGNORE_INDEX,) * kept
        else:
            try:
                labels = tuple(label2id[tag] for tag in sentence.tags[:kept])
            except KeyError as err:
                raise DataError(f"sentence {index}: tag {err.args[0]!r} is not among the labels {list(label2id)}") from None
        encoded.append(EncodedSentence(tuple(encoded_batch["input_ids"][index]), tuple(positions), labels, len(sentence.tokens)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedSplit(sentences, encoded, pad_id)


def _drops_words(encoded_batch: Any, words: Sequence[Sequence[str]], max_length: int) -> bool:
    """True if some sentence lost a word to the tokenizer (not to truncation at max_length)."""
    for index, sentence in enumerate(words):
        kept = {word_id for word_id in encoded_batch.word_ids(index) if word_id is not None}
        truncated = len(encoded_batch["input_ids"][index]) >= max_length
        if kept != set(range(len(kept))) or (len(kept) < len(sentence) and not truncated):
            return True
    return False


def _tokenizable_words(words: list[list[str]], tokenizer: Any) -> list[list[str]]:
    """The sentences' words, each word the tokenizer turns into NO token replaced by its unknown token.

    Real corpora carry such words (control or zero-width characters, symbols a vocabulary drops);
    dropped, they would shift every later label. Replaced, they keep their gold tag and are scored.
    """
    distinct = sorted({word for sentence in words for word in sentence})
    pieces = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    empty = {word for word, ids in zip(distinct, pieces) if not ids}
    if not empty:
        return words
    unknown = tokenizer.unk_token
    if unknown is None:
        raise DataError(f"the tokenizer produces no token for {len(empty)} word(s) (e.g. {sorted(empty)[0]!r}) "
                        f"and has no unknown token to stand for them; clean the data")
    count = sum(word in empty for sentence in words for word in sentence)
    log.warning("%d word(s) the tokenizer turns into no token (e.g. %r) are read as %s; their tags are kept",
                count, sorted(empty)[0], unknown)
    return [[unknown if word in empty else word for word in sentence] for sentence in words]


def collate(examples: Sequence[EncodedSentence], pad_id: int, indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sentence (not to max_length)."""
    batch_size = len(examples)
    max_tokens = max(len(example.input_ids) for example in examples)
    max_words = max(max(len(example.word_positions) for example in examples), 1)
    input_ids = torch.full((batch_size, max_tokens), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, max_tokens), dtype=torch.long)
    word_positions = torch.zeros((batch_size, max_words), dtype=torch.long)
    word_mask = torch.zeros((batch_size, max_words), dtype=torch.bool)
    labels = torch.full((batch_size, max_words), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n_tokens, n_words = len(example.input_ids), len(example.word_positions)
        input_ids[row, :n_tokens] = torch.tensor(example.input_ids)
        attention_mask[row, :n_tokens] = 1
        word_positions[row, :n_words] = torch.tensor(example.word_positions)
        word_mask[row, :n_words] = True
        labels[row, :n_words] = torch.tensor(example.labels)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "word_positions": word_positions,
        "word_mask": word_mask,
        "labels": labels,
    }
    if indices is not None:
        batch["index"] = torch.tensor(list(indices), dtype=torch.long)
    return batch


def gather_words(token_values: torch.Tensor, word_positions: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, dim) -> (batch, words, dim): the value at each word's first sub-token."""
    index = word_positions.unsqueeze(-1).expand(-1, -1, token_values.size(-1))
    return token_values.gather(1, index)


def bucketed_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                     shuffle: bool = True, bucket_factor: int = 50) -> list[list[int]]:
    """Batches of similar-length sentences, so padding (and wasted compute) stays small.

    Shuffle, cut into buckets of `batch_size * bucket_factor`, sort each bucket by length, slice
    into batches, shuffle the batches. Same (seed, epoch) -> same batches.
    """
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed * 1_000_003 + epoch)
    rng.shuffle(order)
    bucket = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def random_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Uniformly shuffled batches (the usual sampler): more padding than length buckets, but a
    batch's length mix is the corpus's. Same (seed, epoch) -> same batches."""
    order = list(range(len(lengths)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
