"""Recipe options: learning-rate schedules, precision, checkpoint choice, batching, loss normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from distill_lab import precision
from distill_lab.data.align import bucketed_batches, encode_sentences, random_batches
from distill_lab.distill import losses
from distill_lab.distill.engine import Objective, TrainRecipe, train
from distill_lab.errors import SpecError, TrialError
from distill_lab.evaluation import evaluate
from distill_lab.spec import parse_spec
from tests.test_pipeline import HAND_LABELS, LABEL2ID, SENTENCES, _classifier, _tokenizer


def _split():
    return encode_sentences(SENTENCES, _tokenizer("tiny-bert"), LABEL2ID, 32)


def _lr_curve(schedule: str, steps: int = 10, warmup: float = 0.2) -> list[float]:
    split = _split()  # batch 1: one eval (and one lr reading) per step
    recipe = TrainRecipe(epochs=steps / len(split), learning_rate=1e-3, batch_size=1, seed=0, eval_every=1,
                         warmup_ratio=warmup, lr_schedule=schedule)
    result = train(_classifier("tiny-bert", 0), split, split, HAND_LABELS, recipe, Objective())
    return [h["learning_rate"] for h in result.history]


def test_linear_schedule_warms_up_then_decays_to_zero():
    # transformers' linear schedule, 2 warmup steps of 10: lr after step k is 1e-3 * factor(k).
    expected = [1e-3 * min(k / 2, (10 - k) / 8) for k in range(1, 11)]
    assert _lr_curve("linear") == pytest.approx(expected)
    assert _lr_curve("linear")[-1] == 0.0


def test_cosine_and_constant_schedules():
    cosine = _lr_curve("cosine")
    assert cosine[:2] == pytest.approx([5e-4, 1e-3])
    assert cosine[5] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert _lr_curve("constant") == pytest.approx([5e-4] + [1e-3] * 9)


def test_unknown_schedule_is_a_trial_error():
    with pytest.raises(TrialError, match="lr_schedule 'step' is not one of linear, cosine, constant"):
        _lr_curve("step")


def test_checkpoint_last_keeps_the_final_weights_and_best_dev_the_best():
    split = _split()
    recipe = dict(epochs=6, learning_rate=5e-3, batch_size=2, seed=0, eval_every=2, warmup_ratio=0.0)
    runs = {}
    for choice in ("best_dev", "last"):
        model = _classifier("tiny-bert", 0)
        result = train(model, split, split, HAND_LABELS, TrainRecipe(**recipe, checkpoint=choice), Objective())
        rescored, _ = evaluate(model, split, HAND_LABELS)
        runs[choice] = (result, rescored.f1)
    best, last = runs["best_dev"][0], runs["last"][0]
    # Same seed, same steps: both runs saw the same evaluations.
    assert [h["dev_f1"] for h in best.history] == pytest.approx([h["dev_f1"] for h in last.history])
    assert best.kept_scores.f1 == max(h["dev_f1"] for h in best.history) == runs["best_dev"][1]
    assert last.kept_scores.f1 == last.history[-1]["dev_f1"] == runs["last"][1]
    assert last.best_dev_f1 == best.best_dev_f1  # the best eval is still recorded with 'last'


def test_random_batches_cover_every_sentence_once_and_repeat_per_seed():
    lengths = [5, 1, 30, 2, 8, 9, 3, 40, 4, 7, 6]
    batches = random_batches(lengths, 3, seed=4, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in batches] == [3, 3, 3, 2]
    assert batches == random_batches(lengths, 3, seed=4, epoch=0)
    assert batches != random_batches(lengths, 3, seed=4, epoch=1)
    # Length buckets sort within a bucket; random batches do not (this seed mixes lengths).
    bucketed = bucketed_batches(lengths, 3, seed=4, epoch=0)
    assert all(sorted(lengths[i] for i in b) == [lengths[i] for i in b] for b in bucketed)


def test_fixed_token_normalisation_weighs_every_word_the_same():
    split = _split()
    model = _classifier("tiny-bert", 0)
    batch = split.batch([0, 1])
    plain = Objective().losses(model, batch, torch.device("cpu"))
    n_words = int(batch["word_mask"].sum())
    fixed = Objective(reference_words=2.0 * n_words).losses(model, batch, torch.device("cpu"))
    # reference twice the batch's words -> half the batch-mean loss: loss = sum over words / reference.
    assert fixed["hard"].item() == pytest.approx(plain["hard"].item() * 0.5)
    assert fixed["total"].item() == pytest.approx(plain["total"].item() * 0.5)


def test_train_with_fixed_tokens_sets_the_epoch_mean_words_per_batch():
    split = _split()
    words = sum(len(e.word_positions) for e in split.encoded)
    seen = []

    class Spy(Objective):
        def losses(self, model, batch, device):
            seen.append(self.reference_words)
            return super().losses(model, batch, device)

    recipe = TrainRecipe(epochs=1, learning_rate=1e-3, batch_size=3, seed=0, eval_every=100,
                         loss_normalization="fixed_tokens")
    train(_classifier("tiny-bert", 0), split, split, HAND_LABELS, recipe, Spy())
    assert seen and all(value == pytest.approx(words / math.ceil(len(split) / 3)) for value in seen)


def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.resolve("fp32", cpu) == "fp32"
    assert precision.resolve("bf16", cpu) == "bf16"
    with pytest.raises(SpecError, match=r"^training.precision 'fp16' needs a CUDA device \(use 'bf16' or 'auto' on CPU\)$"):
        precision.resolve("fp16", cpu)
    with pytest.raises(SpecError, match="^training.precision: 'fp8' is not one of fp32, bf16, fp16, auto$"):
        precision.resolve("fp8", cpu)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.resolve("auto", cpu) == expected


def test_bf16_autocast_runs_matmuls_in_bf16_and_losses_in_fp32():
    model = _classifier("tiny-bert", 0)
    batch = _split().batch([0, 1, 2])
    with precision.autocast("cpu", "bf16"):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["word_mask"]
        soft = losses.soft_loss(logits[:, :mask.size(1)], logits[:, :mask.size(1)].detach() * 2, mask, 4.0)
        hard = losses.hard_loss(logits[:, :mask.size(1)], batch["labels"])
    assert logits.dtype == torch.bfloat16
    assert soft.dtype == torch.float32 and hard.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    with precision.autocast("cpu", "fp32"):
        assert model(input_ids=batch["input_ids"]).logits.dtype == torch.float32


def test_bf16_training_learns_like_fp32():
    split = _split()
    scores = {}
    for name in ("fp32", "bf16"):
        recipe = TrainRecipe(epochs=15, learning_rate=5e-3, batch_size=2, seed=0, eval_every=10 ** 6,
                             warmup_ratio=0.0, precision=name)
        model = _classifier("tiny-bert", 0)
        first = Objective().losses(model, split.batch(list(range(len(split)))), torch.device("cpu"))["hard"].item()
        result = train(model, split, split, HAND_LABELS, recipe, Objective())
        final = Objective().losses(model, split.batch(list(range(len(split)))), torch.device("cpu"))["hard"].item()
        scores[name] = (first, final, result.kept_scores.f1)
    for name, (first, final, _) in scores.items():
        assert final < 0.5 * first, name  # both precisions fit the hand-made sentences
    assert scores["bf16"][1] == pytest.approx(scores["fp32"][1], rel=0.5, abs=0.05)


def test_spec_accepts_the_recipe_options_and_rejects_typos():
    spec = parse_spec({"name": "r", "training": {"precision": "auto", "checkpoint": "last", "batching": "random",
                                                 "loss_normalization": "fixed_tokens", "lr_schedule": "cosine"}})
    assert spec.training.precision == "auto" and spec.training.lr_schedule == "cosine"
    from distill_lab.errors import SpecError
    with pytest.raises(SpecError, match="training.precision: got 'bf32'"):
        parse_spec({"name": "r", "training": {"precision": "bf32"}})


def test_bf16_on_a_cpu_without_native_bf16_is_said_once_and_by_validate(monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    precision._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="distill_lab.precision"):
        for _ in range(3):  # every seed of every trial resolves it: one line, not one per run
            assert precision.resolve("bf16", cpu) == "bf16"  # still honoured: the user asked for it
        precision.resolve("fp32", cpu)
    assert [r.message for r in caplog.records] == [precision.EMULATED_BF16]
    training = SimpleNamespace(precision="bf16", device="cpu")
    assert precision.notes(training) == (precision.EMULATED_BF16,)
    assert precision.notes(SimpleNamespace(precision="auto", device="cpu")) == ()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.notes(training) == ()
