"""The practitioner's remedies: transfer text, entity-swap augmentation, class weights."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import yaml

from distill_lab.data.align import IGNORE_INDEX, encode_sentences
from distill_lab.data.augment import augment, mention_lexicon, mentions, read_unlabeled
from distill_lab.data.corpus import Sentence
from distill_lab.data.loader import load_corpus, training_sentences
from distill_lab.data.synthetic import generate_corpus
from distill_lab.distill.engine import Objective
from distill_lab.distill.teacher_cache import compute_teacher_targets
from distill_lab.errors import DataError
from distill_lab.pipeline import class_weight_tensor
from distill_lab.spec import parse_spec, resolve

CLI = [sys.executable, "-m", "distill_lab.cli"]


def _valid_iob2(tags: tuple[str, ...]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_augment_is_deterministic_per_seed_and_differs_across_seeds():
    train = generate_corpus(n_train=80, n_dev=1, n_test=1, seed=3)["train"]
    first = augment(train, copies=2, seed=7)
    again = augment(train, copies=2, seed=7)
    other = augment(train, copies=2, seed=8)
    assert first == again
    assert first != other
    with_mentions = [s for s in train if mentions(s)]
    assert len(first) == 2 * len(with_mentions)


def test_augment_keeps_valid_iob2_and_each_swapped_span_keeps_its_type():
    train = generate_corpus(n_train=120, n_dev=1, n_test=1, seed=5)["train"]
    lexicon = mention_lexicon(train)
    sources = [s for s in train if mentions(s)]
    augmented = augment(train, copies=1, seed=11)
    changed = 0
    for source, copy in zip(sources, augmented):
        assert _valid_iob2(copy.tags)
        assert len(copy.tokens) == len(copy.tags)
        before, after = mentions(source), mentions(copy)
        assert [kind for _, _, kind in before] == [kind for _, _, kind in after]
        for start, end, kind in after:
            assert copy.tokens[start:end] in lexicon[kind]
        changed += copy.tokens != source.tokens
    assert changed > len(sources) // 2  # the swap really replaces mentions


def test_augment_o_noise_only_touches_o_tokens():
    sentence = Sentence(("the", "big", "Paris", "office", "said"), ("O", "O", "B-LOC", "O", "O"))
    other = Sentence(("a", "small", "Lima", "team", "left"), ("O", "O", "B-LOC", "O", "O"))
    out = augment([sentence, other], copies=3, seed=1, o_noise=1.0)
    for copy in out:
        assert copy.tags == ("O", "O", "B-LOC", "O", "O")
        assert copy.tokens[2] in ("Paris", "Lima")


def test_augment_negative_copies_is_rejected():
    with pytest.raises(DataError, match="copies must be >= 0"):
        augment([], copies=-1, seed=0)


def test_read_unlabeled_lines_and_conll_without_tags(tmp_path):
    lines = tmp_path / "raw.txt"
    lines.write_text("Jordan flew to Paris .\n\nShares of Ford fell\n")
    assert [s.tokens for s in read_unlabeled(lines)] == [("Jordan", "flew", "to", "Paris", "."),
                                                         ("Shares", "of", "Ford", "fell")]
    conll = tmp_path / "raw.conll"
    conll.write_text("Jordan\nflew\nto\nParis\n.\n\nFord\nfell\n")
    sentences = read_unlabeled(conll)
    assert [s.tokens for s in sentences] == [("Jordan", "flew", "to", "Paris", "."), ("Ford", "fell")]
    assert all(s.tags is None for s in sentences)


def test_read_unlabeled_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_unlabeled(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_unlabeled(empty)


def _spec(**data):
    return parse_spec({"name": "r", "data": {"source": "synthetic", "synthetic": {"n_train": 40, "n_dev": 8, "n_test": 8},
                                             "max_length": 32, **data},
                       "teacher": {"model": "tiny-bert"}, "student": {"from_teacher": {"num_layers": 2}}})


def test_transfer_from_train_remainder_drops_labels_and_mixes_at_ratio(tmp_path):
    spec = _spec(max_train_sentences=10, transfer={"from_train_remainder": True, "ratio": 2.0})
    config = resolve(spec)
    corpus = load_corpus(config.data)
    assert len(corpus.train) == 10 and len(corpus.transfer) == 30
    assert all(s.tags is None for s in corpus.transfer)
    sentences = training_sentences(corpus, config.data)
    assert len(sentences) == 10 + 20  # ratio 2 x 10 gold sentences
    assert sentences[10:] == list(corpus.transfer[:20])


def test_hard_loss_ignores_transfer_sentences_gradient_check():
    from distill_lab import models

    ref = models.resolve_reference("tiny-bert")
    tokenizer = models.load_tokenizer(ref)
    labels = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    torch.manual_seed(0)
    model = models.token_classifier_from_backbone(ref, labels)
    gold = Sentence(("jordan", "flew", "to", "paris"), ("B-PER", "O", "O", "B-LOC"))
    transfer = Sentence(("ford", "said", "in", "lima"), None)
    split = encode_sentences([gold, transfer], tokenizer, {l: i for i, l in enumerate(labels)}, 32)
    assert split.encoded[1].labels == (IGNORE_INDEX,) * 4
    batch = split.batch([0, 1])
    only_gold = split.batch([0])
    objective = Objective(alpha_hard=1.0)

    def grads(b):
        model.zero_grad()
        objective.losses(model, b, torch.device("cpu"))["total"].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # The transfer sentence contributes no hard-loss gradient: same as the gold sentence alone.
    mixed, alone = grads(batch), grads(only_gold)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mixed, alone))
    # ... but it does reach the soft loss.
    targets = compute_teacher_targets(model, split)
    soft = Objective(alpha_hard=0.0, alpha_soft=1.0, temperature=2.0, teacher=targets)
    model.zero_grad()
    with torch.no_grad():
        model.classifier.bias[1] += 1.0  # student != teacher (one label moved), so the soft loss is not 0
    parts = soft.losses(model, batch, torch.device("cpu"))
    assert parts["soft"].item() > 0


def test_class_weights_change_the_hard_loss_exactly_as_by_hand():
    corpus_spec = resolve(_spec())
    corpus = load_corpus(corpus_spec.data)
    weights = class_weight_tensor({"PER": 3.0}, corpus)
    labels = corpus.labels
    assert weights[labels.index("B-PER")] == 3.0 and weights[labels.index("I-PER")] == 3.0
    assert weights[labels.index("O")] == 1.0
    # Two words, hand computed: weighted mean of -log softmax at the gold label.
    logits = torch.zeros((1, 2, len(labels)))
    logits[0, 0, labels.index("B-PER")] = 2.0
    gold = torch.tensor([[labels.index("B-PER"), labels.index("O")]])
    n = len(labels)
    ce_per = -math.log(math.exp(2) / (math.exp(2) + n - 1))
    ce_o = math.log(n)  # all-zero logits: uniform softmax
    expected = (3.0 * ce_per + 1.0 * ce_o) / 4.0
    from distill_lab.distill.losses import hard_loss

    assert hard_loss(logits, gold, weights).item() == pytest.approx(expected, rel=1e-6)
    assert hard_loss(logits, gold).item() == pytest.approx((ce_per + ce_o) / 2, rel=1e-6)


@pytest.mark.parametrize("data, message", [
    ({"transfer": {"path": "missing.txt"}}, "file not found"),
    ({"transfer": {"path": "empty.txt"}}, "empty"),
    ({"augment": {"copies": -1}}, "data.augment.copies"),
])
def test_cli_bad_remedy_input_is_one_line_exit_2(tmp_path, data, message):
    (tmp_path / "empty.txt").write_text("")
    spec = {"name": "bad", "data": {"source": "synthetic", "synthetic": {"n_train": 20, "n_dev": 5, "n_test": 5}, **data},
            "teacher": {"model": "tiny-bert"}, "student": {"from_teacher": {"num_layers": 2}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(CLI + ["run", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_class_weight_for_unknown_type_is_one_line_exit_2(tmp_path):
    spec = {"name": "bad", "data": {"source": "synthetic", "synthetic": {"n_train": 20, "n_dev": 5, "n_test": 5}},
            "teacher": {"model": "tiny-bert"}, "student": {"from_teacher": {"num_layers": 2}},
            "distill": {"class_weights": {"GPE": 2.0}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(CLI + ["run", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "distill.class_weights" in result.stderr and "GPE" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert "Traceback" not in result.stderr


