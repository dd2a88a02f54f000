"""One entry point from a `data` spec section to a NerCorpus."""

from __future__ import annotations

from pathlib import Path

from distill_lab.data.corpus import NerCorpus, Sentence
from distill_lab.errors import DataError
from distill_lab.spec import DataSpec


def load_corpus(spec: DataSpec) -> NerCorpus:
    """Load the splits named by the spec, apply the sentence limits, check nothing is empty."""
    if spec.source == "synthetic":
        from distill_lab.data.synthetic import generate_corpus

        synthetic = spec.synthetic
        splits = generate_corpus(synthetic.n_train, synthetic.n_dev, synthetic.n_test, seed=synthetic.seed)
    elif spec.source == "conll":
        from distill_lab.data.conll import load_conll_dir

        splits = load_conll_dir(Path(spec.path or ""), spec.scheme)
    else:
        from distill_lab.data.hub import load_hub_dataset

        splits = load_hub_dataset(spec.name or "", spec.config, trust_remote_code=spec.trust_remote_code)
    limits = {"train": spec.max_train_sentences, "dev": spec.max_eval_sentences, "test": spec.max_test_sentences}
    limited: dict[str, list[Sentence]] = {}
    for split, sentences in splits.items():
        if not sentences:
            where = spec.path or spec.name or "synthetic corpus"
            raise DataError(f"{where}: the {split} split has no sentences")
        limit = limits.get(split)
        limited[split] = list(sentences[:limit] if limit else sentences)
    return NerCorpus.from_splits(limited)
