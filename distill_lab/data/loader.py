"""One entry point from a `data` spec section to a NerCorpus."""

from __future__ import annotations

from pathlib import Path

from distill_lab.data.augment import augment, read_unlabeled
from distill_lab.data.conll import load_conll_dir, split_files
from distill_lab.data.corpus import NerCorpus, Sentence
from distill_lab.data.corrupt import corrupt
from distill_lab.data.hub import load_hub_dataset
from distill_lab.data.synthetic import generate_corpus
from distill_lab.errors import DataError
from distill_lab.spec import DataSpec


def check_data(spec: DataSpec) -> None:
    """What can be checked without reading the data: its files exist (before any state is written)."""
    if spec.source == "conll":
        split_files(Path(spec.path or ""))
    if spec.transfer is not None and spec.transfer.path and not Path(spec.transfer.path).is_file():
        raise DataError(f"data.transfer.path {spec.transfer.path}: file not found")


def load_corpus(spec: DataSpec) -> NerCorpus:
    """Load the splits named by the spec, apply the sentence limits, check nothing is empty."""
    if spec.source == "synthetic":
        synthetic = spec.synthetic
        splits = generate_corpus(synthetic.n_train, synthetic.n_dev, synthetic.n_test, seed=synthetic.seed)
    elif spec.source == "conll":
        splits = load_conll_dir(Path(spec.path or ""), spec.scheme)
    else:
        splits = load_hub_dataset(spec.name or "", spec.config, trust_remote_code=spec.trust_remote_code)
    limits = {"train": spec.max_train_sentences, "dev": spec.max_eval_sentences, "test": spec.max_test_sentences}
    limited: dict[str, list[Sentence]] = {}
    for split, sentences in splits.items():
        if not sentences:
            where = spec.path or spec.name or "synthetic corpus"
            raise DataError(f"{where}: the {split} split has no sentences")
        limit = limits.get(split)
        limited[split] = list(sentences[:limit] if limit else sentences)
    gold_train = limited["train"]
    if spec.corrupt is not None:  # induced failures: the training split only
        limited["train"] = corrupt(gold_train, spec.corrupt)
    corpus = NerCorpus.from_splits(limited)
    transfer = spec.transfer
    if transfer is None:
        return corpus
    if transfer.from_train_remainder:
        # "Little gold data, much raw text": the rest of the train split, its labels dropped.
        remainder = splits["train"][len(gold_train):]
        if not remainder:
            raise DataError("data.transfer.from_train_remainder: the train split has no sentences beyond "
                            "max_train_sentences (lower max_train_sentences)")
        text = [Sentence(s.tokens, None) for s in remainder]
    else:
        text = read_unlabeled(Path(transfer.path or ""))
    if transfer.max_sentences:
        text = text[: transfer.max_sentences]
    return NerCorpus(corpus.train, corpus.dev, corpus.test, corpus.labels, tuple(text))


def training_sentences(corpus: NerCorpus, spec: DataSpec) -> list[Sentence]:
    """Gold train sentences + augmented copies + the transfer text mixed in at `transfer.ratio`."""
    sentences = list(corpus.train)
    if spec.augment is not None and spec.augment.copies:
        sentences += augment(corpus.train, copies=spec.augment.copies, seed=spec.augment.seed,
                             o_noise=spec.augment.o_noise)
    if corpus.transfer and spec.transfer is not None:
        wanted = min(len(corpus.transfer), max(1, round(spec.transfer.ratio * len(corpus.train))))
        sentences += list(corpus.transfer[:wanted])
    return sentences
