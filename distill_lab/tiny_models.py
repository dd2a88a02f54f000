"""Tiny randomly initialised models of each supported family (tests, the offline quickstart's checks).

Built once under the distill-lab home (`tiny-bert`, `tiny-roberta-char`, ...): 4 layers, 32 wide, a
word-piece vocabulary that covers the synthetic corpus, so runs of a second finish in seconds.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoModel, BertConfig, BertTokenizerFast, DebertaV2Config, ElectraConfig, MPNetConfig,
                          RobertaConfig)
from transformers.utils import logging as hf_logging

from distill_lab.data.synthetic import generate_corpus
from distill_lab.errors import ModelError
from distill_lab.paths import home_dir

TINY_FAMILIES = {"bert": "bert", "roberta": "roberta", "electra": "electra", "deberta": "deberta-v2",
                 "mpnet": "mpnet"}
_TINY_VERSION = 2  # bump when the tiny models change, so stale copies under the home are rebuilt
_TINY_MARKER = f"tiny-v{_TINY_VERSION}"


def _tiny_vocab(char_level: bool) -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces = chars + [f"##{c}" for c in chars]
    if char_level:
        return specials + pieces
    words: set[str] = set()
    for sentences in generate_corpus(seed=0).values():
        for sentence in sentences:
            words.update(token.lower() for token in sentence.tokens)
    return specials + pieces + sorted(words - set(pieces))


def _tiny_config(family: str, vocab_size: int, pad_id: int) -> Any:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=520,
        pad_token_id=pad_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if family == "bert":
        return BertConfig(**common)
    if family == "roberta":
        return RobertaConfig(**common, bos_token_id=2, eos_token_id=3)
    if family == "electra":
        return ElectraConfig(**common, embedding_size=16)
    if family == "mpnet":  # relative_attention_bias: 32 buckets x 2 heads, shared by all layers
        return MPNetConfig(**common, bos_token_id=2, eos_token_id=3)
    return DebertaV2Config(
        **common,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
    )


def build_tiny_model(family: str, *, char_level: bool = False) -> Path:
    """Create (once) a tiny randomly initialised model directory of the given family."""
    hf_logging.disable_progress_bar()  # a tiny model needs no "writing shards" bar
    directory = home_dir() / "models" / f"tiny-{family}{'-char' if char_level else ''}"
    marker = directory / _TINY_MARKER
    if (directory / "model.safetensors").is_file() and marker.is_file():
        return directory
    staging = directory.with_name(directory.name + f".tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab(char_level)
    (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        # transformers >= 5 takes the vocabulary itself and silently ignores `vocab_file`
        # (which left a 5-token vocabulary: every word became [UNK]).
        tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(staging / "vocab.txt"), do_lower_case=True)
    if len(tokenizer.get_vocab()) != len(vocab) or tokenizer.convert_tokens_to_ids("a") == tokenizer.unk_token_id:
        raise ModelError(f"tiny-{family}: could not build its tokenizer with this transformers version")
    tokenizer.save_pretrained(staging)
    torch.manual_seed(0)
    model = AutoModel.from_config(_tiny_config(TINY_FAMILIES[family], len(vocab), vocab.index("[PAD]")))
    model.save_pretrained(staging, safe_serialization=True)
    (staging / _TINY_MARKER).write_text(f"{_TINY_VERSION}\n", encoding="utf-8")

    if directory.exists() and not marker.is_file():
        # Built by an older distill-lab (e.g. with the broken all-[UNK] tokenizer): replace it.
        shutil.rmtree(directory, ignore_errors=True)
    # Atomic publish: concurrent workers may build the same tiny model.
    try:
        staging.rename(directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
