"""Inference speed: the student vs teacher measurement behind the report's speedup column."""

from __future__ import annotations

import itertools

import pytest
import torch

from distill_lab import models, speed
from distill_lab.data.align import encode_sentences, label_index
from distill_lab.data.synthetic import generate_corpus
from distill_lab.pipeline import run_distillation
from distill_lab.spec import parse_spec, resolve
from tiny_specs import tiny_run

CPU = torch.device("cpu")


class Recorder(torch.nn.Module):
    """Records its forward calls' batch sizes in a shared log under its name."""

    def __init__(self, name: str, log: list[tuple[str, int]]):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, input_ids, attention_mask):
        self.log.append((self.name, int(input_ids.shape[0])))
        assert not torch.is_grad_enabled()
        return input_ids


@pytest.fixture(scope="module")
def split():
    sentences = generate_corpus(n_train=70, n_dev=0, n_test=0, seed=3)["train"]
    tokenizer = models.load_tokenizer(models.resolve_reference("tiny-bert"))
    labels = sorted({tag for s in sentences for tag in s.tags})
    return encode_sentences(sentences, tokenizer, label_index(labels), 32)


def test_measure_alternates_models_over_batches_of_32_and_restores_training_mode(split):
    log: list[tuple[str, int]] = []
    student, teacher = Recorder("student", log), Recorder("teacher", log)
    student.train(), teacher.eval()
    result = speed.measure(student, teacher, split, split, sentences=50, device=CPU, precision="fp32", passes=2)
    assert result is not None and result.sentences == 50
    # warm-up: one batch each; then per pass every batch of one model, then the other's: 32 + 18 sentences
    assert log == [("student", 32), ("teacher", 32),
                   ("student", 32), ("student", 18), ("teacher", 32), ("teacher", 18),
                   ("student", 32), ("student", 18), ("teacher", 32), ("teacher", 18)]
    assert student.training is True and teacher.training is False


def test_measure_speed_is_sentences_over_the_median_pass(split, monkeypatch):
    # A fake clock: each pass's duration comes from the list below, in call order.
    durations = iter([2.0, 4.0, 1.0, 8.0, 3.0, 2.0])  # student, teacher, student, teacher, ...
    ticks = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    now = iter([t for t in ticks])
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(now))
    log: list[tuple[str, int]] = []
    result = speed.measure(Recorder("s", log), Recorder("t", log), split, split, sentences=64, device=CPU,
                           precision="fp32", passes=3)
    # student passes 2, 1, 3 s -> median 2; teacher 4, 8, 2 s -> median 4
    assert result.student_sentences_per_s == pytest.approx(64 / 2.0)
    assert result.teacher_sentences_per_s == pytest.approx(64 / 4.0)
    assert result.speedup == pytest.approx(2.0)
    assert result.metrics() == {"student_sentences_per_s": 32.0, "teacher_sentences_per_s": 16.0, "speedup": 2.0}


def test_measure_is_off_for_zero_sentences_and_caps_at_the_split(split):
    log: list[tuple[str, int]] = []
    assert speed.measure(Recorder("s", log), Recorder("t", log), split, split, sentences=0, device=CPU,
                         precision="fp32") is None and log == []
    result = speed.measure(Recorder("s", log), Recorder("t", log), split, split, sentences=10_000, device=CPU,
                           precision="fp32", passes=1)
    assert result.sentences == len(split) == 70


def test_run_records_the_inference_speed_of_student_and_teacher():
    spec = tiny_run("speed")
    spec["training"]["speed_sentences"] = 20
    result = run_distillation(resolve(parse_spec(spec)))
    summary = result.summary()["inference"]
    assert summary["sentences"] == 20  # capped by the option, not the 24 dev sentences
    assert summary["student_sentences_per_s"] > 0 and summary["teacher_sentences_per_s"] > 0
    assert summary["speedup"] == pytest.approx(summary["student_sentences_per_s"] / summary["teacher_sentences_per_s"])
    spec["training"]["speed_sentences"] = 0
    assert run_distillation(resolve(parse_spec(spec))).summary()["inference"] is None


def test_a_process_measures_each_student_shape_once(monkeypatch):
    from distill_lab import pipeline

    monkeypatch.setattr(pipeline, "_SPEEDS", {})
    calls = []
    real = speed.measure
    monkeypatch.setattr(speed, "measure", lambda *args, **kwargs: calls.append(kwargs["sentences"]) or real(*args, **kwargs))
    spec = tiny_run("speed_once")
    spec["training"]["speed_sentences"] = 16
    first, second = (run_distillation(resolve(parse_spec({**spec, "training": {**spec["training"], "seed": seed}})))
                     for seed in (1, 2))
    assert calls == [16]  # the second seed's student has the same shape: its speed is not measured again
    assert second.inference_speed == first.inference_speed
    spec["student"] = {"from_teacher": {"num_layers": 1}, "init": {"strategy": "teacher", "layers": "uniform"}}
    run_distillation(resolve(parse_spec(spec)))
    assert calls == [16, 16]  # another shape: measured
