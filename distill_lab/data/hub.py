"""Load token-classification datasets from the Hugging Face Hub as IOB2 :class:`Sentence` splits."""

from __future__ import annotations

import inspect
from typing import Any

from distill_lab.data.corpus import Sentence, to_iob2
from distill_lab.errors import DataError

# Hub split name -> our split name; the first one present wins for each of ours.
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "dev": ("validation", "valid", "dev"),
    "test": ("test",),
}


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def load_hub_dataset(
    name: str,
    config: str | None = None,
    *,
    trust_remote_code: bool = False,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
) -> dict[str, list[Sentence]]:
    """Download ``name`` (optionally ``config``) with ``datasets.load_dataset`` into train/dev/test.

    ``trust_remote_code`` is only forwarded to ``datasets`` versions that still accept it
    (script-based datasets were dropped in datasets 4.0). Any failure is a DataError.
    """
    label = name if config is None else f"{name} (config {config!r})"
    # Lazy: `datasets` (a required dependency) pulls in pyarrow and fsspec, which CoNLL and
    # synthetic studies never need in every worker process.
    from datasets import load_dataset

    kwargs: dict[str, Any] = {}
    if "trust_remote_code" in inspect.signature(load_dataset).parameters:
        kwargs["trust_remote_code"] = trust_remote_code
    try:
        dataset_dict = load_dataset(name, config, **kwargs)
    except Exception as exc:  # network, auth, missing dataset/config: all reported alike
        raise DataError(
            f"could not load Hugging Face dataset {label}: {type(exc).__name__}: "
            f"{_one_line(exc)}; check the name and network access, or download the data and "
            f"point the study at a local CoNLL directory with train/dev/test files"
        ) from exc
    return splits_from_dataset_dict(
        dataset_dict, token_column=token_column, tag_column=tag_column, source=label
    )


def _tag_names(features: Any, tag_column: str) -> list[str] | None:
    """Label names if the tag column is a sequence of ClassLabel, else None (string tags)."""
    inner = getattr(features[tag_column], "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names is not None else None


def splits_from_dataset_dict(
    dataset_dict: Any,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
    *,
    source: str = "dataset",
) -> dict[str, list[Sentence]]:
    """Convert a ``datasets.DatasetDict`` into ``{"train", "dev", "test"}`` IOB2 sentences.

    Integer tags are mapped through the column's ClassLabel names; string tags are used
    as they are. Empty examples are dropped, as blank lines are in CoNLL files.
    """
    available = list(dataset_dict.keys())
    out: dict[str, list[Sentence]] = {}
    for ours, aliases in _SPLIT_ALIASES.items():
        hub_split = next((a for a in aliases if a in dataset_dict), None)
        if hub_split is None:
            raise DataError(
                f"{source}: no {ours} split (looked for {', '.join(aliases)}); "
                f"available splits: {', '.join(available) or 'none'}"
            )
        out[ours] = _convert_split(dataset_dict[hub_split], hub_split, token_column,
                                   tag_column, source)
    return out


def _convert_split(
    dataset: Any, split: str, token_column: str, tag_column: str, source: str
) -> list[Sentence]:
    columns = list(dataset.column_names)
    for column, role in ((token_column, "token"), (tag_column, "tag")):
        if column not in columns:
            raise DataError(
                f"{source} split {split!r}: no {role} column {column!r}; "
                f"available columns: {', '.join(columns)}"
            )
    names = _tag_names(dataset.features, tag_column)
    sentences: list[Sentence] = []
    # Column access reads each column once from Arrow instead of materialising row dicts.
    for index, (tokens, raw_tags) in enumerate(zip(dataset[token_column], dataset[tag_column])):
        where = f"{source} split {split!r} example {index}"
        if len(tokens) != len(raw_tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(raw_tags)} tags")
        if not tokens:
            continue
        tags: list[str] = []
        for tag in raw_tags:
            if isinstance(tag, str):
                tags.append(tag)
            elif names is not None and isinstance(tag, int) and 0 <= tag < len(names):
                tags.append(names[tag])
            else:
                allowed = f"0..{len(names) - 1}" if names is not None else "tag strings"
                raise DataError(
                    f"{where}: tag {tag!r} cannot be mapped to a label (allowed: {allowed}); "
                    f"is {tag_column!r} the tag column?"
                )
        sentences.append(Sentence(tuple(tokens), to_iob2(tags, "auto", where=where)))
    if not sentences:
        raise DataError(f"{source} split {split!r}: no sentences")
    return sentences
