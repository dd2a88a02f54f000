"""Teacher outputs computed once: cached (memory, disk) equals live within fp16 rounding."""

from __future__ import annotations

import numpy as np
import torch

from distill_lab import models
from distill_lab.data.align import bucketed_batches, encode_sentences
from distill_lab.data.synthetic import generate_corpus
from distill_lab.distill import teacher_cache
from distill_lab.distill.teacher_cache import live_teacher_targets, teacher_targets


def _teacher_and_split():
    ref = models.resolve_reference("tiny-bert")
    tokenizer = models.load_tokenizer(ref)
    sentences = generate_corpus(n_train=24, n_dev=1, n_test=1, seed=2)["train"]
    labels = ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    torch.manual_seed(0)
    teacher = models.token_classifier_from_backbone(ref, labels).eval()
    split = encode_sentences(sentences, tokenizer, {l: i for i, l in enumerate(labels)}, 32)
    return teacher, split


def test_cached_and_live_teacher_outputs_agree_within_fp16(tmp_path):
    teacher_cache.clear_memory()
    teacher, split = _teacher_and_split()
    cached = teacher_targets(teacher, split, teacher_fingerprint="t", layers=(1, 3), cache_dir=tmp_path)
    live = live_teacher_targets(teacher, split, layers=(1, 3))
    for indices in bucketed_batches(split.lengths, 8, seed=0, epoch=0):
        batch = split.batch(indices)
        n_words, n_tokens = batch["word_positions"].size(1), batch["input_ids"].size(1)
        a, b = cached.batch(indices, n_words, n_tokens), live.batch(indices, n_words, n_tokens)
        assert torch.equal(a["mask"], b["mask"])
        words = a["mask"]  # padded positions hold zeros in the cache and garbage in a live forward
        assert torch.allclose(a["logits"][words], b["logits"][words], atol=1e-5)
        tokens = batch["attention_mask"].bool()
        for layer in (1, 3):
            # fp16 storage: relative rounding 2^-11 of the value
            assert torch.allclose(a["hidden"][layer][tokens].float(), b["hidden"][layer][tokens].float(),
                                  rtol=1e-3, atol=1e-3)


def test_disk_cache_is_reused_by_another_process_and_extended_with_new_layers(tmp_path):
    teacher_cache.clear_memory()
    teacher, split = _teacher_and_split()
    first = teacher_targets(teacher, split, teacher_fingerprint="t", layers=(0,), cache_dir=tmp_path)
    files = sorted(p.name for p in next(tmp_path.iterdir()).iterdir())
    assert "hidden_0.npy" in files and "word_logits.npy" in files
    teacher_cache.clear_memory()  # as a fresh worker process would start

    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher must not run again for cached outputs")

    original = teacher_cache._forward_all
    teacher_cache._forward_all = forbidden
    try:
        again = teacher_targets(teacher, split, teacher_fingerprint="t", layers=(0,), cache_dir=tmp_path)
    finally:
        teacher_cache._forward_all = original
    assert isinstance(again.hidden[0], np.memmap) or isinstance(again.hidden[0].base, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.word_logits), np.asarray(again.word_logits))
    calls = []

    def counting(teacher_model, split_, layers, *args, **kwargs):
        calls.append(tuple(layers))
        return original(teacher_model, split_, layers, *args, **kwargs)

    teacher_cache._forward_all = counting
    try:
        extended = teacher_targets(teacher, split, teacher_fingerprint="t", layers=(0, 2), cache_dir=tmp_path)
    finally:
        teacher_cache._forward_all = original
    assert calls == [(2,)]  # only the missing layer is computed
    assert set(extended.hidden) == {0, 2}
    assert (next(tmp_path.iterdir()) / "hidden_2.npy").is_file()


def test_cache_over_its_size_limit_falls_back_to_live_teacher(tmp_path, caplog):
    teacher_cache.clear_memory()
    teacher, split = _teacher_and_split()
    targets = teacher_targets(teacher, split, teacher_fingerprint="t", layers=(1,), cache_dir=tmp_path, max_bytes=10)
    assert targets.live is not None
    assert "running the teacher live" in caplog.text
    assert not any(tmp_path.iterdir())


def test_bucketed_batches_are_identical_for_the_same_seed_and_cover_every_sentence():
    lengths = [5, 9, 3, 12, 7, 7, 20, 4, 11, 6] * 5
    a = bucketed_batches(lengths, 4, seed=3, epoch=1, bucket_factor=2)
    b = bucketed_batches(lengths, 4, seed=3, epoch=1, bucket_factor=2)
    c = bucketed_batches(lengths, 4, seed=4, epoch=1, bucket_factor=2)
    assert a == b and a != c
    assert sorted(i for batch in a for i in batch) == list(range(len(lengths)))
    # inside a bucket, batches hold similar lengths: padding per batch is small
    padding = sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in a)
    unsorted = [list(range(i, min(i + 4, len(lengths)))) for i in range(0, len(lengths), 4)]
    naive = sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in unsorted)
    assert padding < naive


def test_token_logits_cached_on_request_equal_the_live_teacher_at_every_attended_subtoken(tmp_path):
    teacher_cache.clear_memory()
    teacher, split = _teacher_and_split()
    plain = teacher_targets(teacher, split, teacher_fingerprint="t", cache_dir=tmp_path)
    assert plain.token_logits is None and "token_logits" not in plain.batch([0, 1], 4, 8)
    cached = teacher_targets(teacher, split, teacher_fingerprint="t", cache_dir=tmp_path, token_logits=True)
    assert (next(tmp_path.iterdir()) / "token_logits.npy").is_file()  # added beside the word logits
    assert cached.token_logits.shape == (sum(len(e.input_ids) for e in split.encoded), teacher.config.num_labels)
    live = live_teacher_targets(teacher, split, token_logits=True)
    with torch.no_grad():
        for indices in bucketed_batches(split.lengths, 8, seed=0, epoch=0):
            batch = split.batch(indices)
            n_words, n_tokens = batch["word_positions"].size(1), batch["input_ids"].size(1)
            a, b = cached.batch(indices, n_words, n_tokens), live.batch(indices, n_words, n_tokens)
            tokens = batch["attention_mask"].bool()
            assert torch.equal(a["token_mask"], tokens) and torch.equal(b["token_mask"], tokens)
            direct = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            assert torch.allclose(a["token_logits"][tokens], direct[tokens], atol=1e-5)
            assert torch.allclose(b["token_logits"][tokens], direct[tokens], atol=1e-5)
            # The first sub-token of each word carries the word-level logit.
            first = torch.gather(a["token_logits"], 1, batch["word_positions"].unsqueeze(-1).expand(
                -1, -1, a["token_logits"].size(-1)))
            words = a["mask"]
            assert torch.allclose(first[words], a["logits"][words], atol=1e-5)
    teacher_cache.clear_memory()  # a fresh process reads them from disk
    again = teacher_targets(teacher, split, teacher_fingerprint="t", cache_dir=tmp_path, token_logits=True)
    np.testing.assert_array_equal(np.asarray(again.token_logits), np.asarray(cached.token_logits))


def test_token_logits_need_token_level_positions():
    import pytest

    teacher, split = _teacher_and_split()
    with pytest.raises(ValueError, match="share a tokenizer"):
        teacher_targets(teacher, split, teacher_fingerprint="t", word_level_hidden=True, token_logits=True)
