"""Resume points: a killed training run continues where it was, and trains what it would have trained."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from distill_lab import models
from distill_lab.data.align import encode_sentences
from distill_lab.data.corpus import Sentence
from distill_lab.distill import resume
from distill_lab.distill.engine import Objective, TrainRecipe, train
from distill_lab.distill.resume import ResumePoint
from distill_lab.paths import home_dir
from distill_lab.pipeline import run_distillation
from distill_lab.spec import parse_spec, resolve
from tiny_specs import TINY_RUN

SENTENCES = (
    Sentence(("Mary", "visited", "Berlin", "on", "Monday", "."), ("B-PER", "O", "B-LOC", "O", "O", "O")),
    Sentence(("Reuters", "reported", "that", "John", "Smith", "flew", "to", "Tokyo", "."),
             ("B-ORG", "O", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "O")),
    Sentence(("The", "World", "Bank", "met", "in", "Paris", "."), ("O", "B-ORG", "I-ORG", "O", "O", "B-LOC", "O")),
    Sentence(("Anna", "left", "Oslo", "."), ("B-PER", "O", "B-LOC", "O")),
    Sentence(("IBM", "hired", "Tom", "in", "Rome", "."), ("B-ORG", "O", "B-PER", "O", "B-LOC", "O")),
)
LABELS = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
# 2 batches per epoch, 3 epochs: 6 steps, an evaluation every 2; dropout on (the RNG state matters).
RECIPE = TrainRecipe(epochs=3, learning_rate=5e-3, batch_size=3, seed=0, eval_every=2, warmup_ratio=0.0)


class Killed(Exception):
    """Stands for the worker being killed: raised out of the loop at a chosen step."""


def _model() -> torch.nn.Module:
    """tiny-bert with dropout on (its own config has none): the RNG state is part of what a point restores."""
    config = models.load_config(models.resolve_reference("tiny-bert"))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.2
    torch.manual_seed(0)
    return models.token_classifier_from_config(config, LABELS)


def _split():
    tokenizer = models.load_tokenizer(models.resolve_reference("tiny-bert"))
    return encode_sentences(SENTENCES, tokenizer, {label: i for i, label in enumerate(LABELS)}, 32)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _kill_at(step: int):
    def progress(done: int, total: int) -> None:
        if done == step:
            raise Killed(f"killed at step {done}")
    return progress


def _point(tmp_path, minutes: float = 0.0) -> ResumePoint:
    point = ResumePoint("run-test", minutes, directory=tmp_path)
    assert point.acquire()
    return point


@pytest.mark.parametrize("checkpoint", ["best_dev", "last"])
def test_a_killed_run_resumes_and_trains_exactly_what_it_would_have(tmp_path, checkpoint):
    recipe = TrainRecipe(**{**RECIPE.__dict__, "checkpoint": checkpoint})
    split = _split()
    whole_model = _model()
    whole = train(whole_model, split, split, LABELS, recipe, Objective())
    assert whole.steps == 6 and whole.resumed_from == 0

    point = _point(tmp_path)
    with pytest.raises(Killed):  # saved after every step (every 0 minutes); killed during step 5
        train(_model(), split, split, LABELS, recipe, Objective(), progress=_kill_at(5), resume=point)
    assert point.path.exists()

    heard: list[int] = []
    resumed_model = _model()  # a fresh process builds the same student again
    resumed = train(resumed_model, split, split, LABELS, recipe, Objective(), resume=point,
                    on_eval=lambda step, metrics: heard.append(step) or False)
    assert resumed.resumed_from == 4  # the last point saved before step 5
    assert heard == [2, 4, 6]  # the earlier evaluations replayed to the caller, then the new one
    assert resumed.steps == whole.steps and resumed.train_tokens == whole.train_tokens
    assert resumed.history == whole.history
    assert (resumed.best_step, resumed.best_dev_f1) == (whole.best_step, whole.best_dev_f1)
    assert resumed.best_dev_predictions == whole.best_dev_predictions
    for name, value in _weights(whole_model).items():
        assert torch.equal(resumed_model.state_dict()[name], value), name


def test_a_finished_run_resumes_at_its_end_and_trains_nothing(tmp_path):
    split = _split()
    point = _point(tmp_path)
    first_model = _model()
    first = train(first_model, split, split, LABELS, RECIPE, Objective(), resume=point)
    steps: list[int] = []
    again_model = _model()
    again = train(again_model, split, split, LABELS, RECIPE, Objective(), resume=point,
                  progress=lambda done, total: steps.append(done))
    assert steps == [] and again.resumed_from == first.steps == 6
    assert again.best_dev_scores == first.best_dev_scores and again.history == first.history
    assert all(torch.equal(again_model.state_dict()[k], v) for k, v in _weights(first_model).items())
    assert again.wall_seconds >= first.wall_seconds  # the earlier process's training time is counted


def test_a_point_of_another_model_is_dropped_with_a_warning(tmp_path, caplog):
    split = _split()
    point = _point(tmp_path)
    train(_model(), split, split, LABELS, RECIPE, Objective(), resume=point)
    torch.manual_seed(0)
    other = models.token_classifier_from_backbone(models.resolve_reference("tiny-bert"), LABELS[:5])
    other_split = encode_sentences(SENTENCES[:1], models.load_tokenizer(models.resolve_reference("tiny-bert")),
                                   {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-ORG": 3, "I-ORG": 4, "B-PER": 0, "I-PER": 0},
                                   32)
    with caplog.at_level(logging.WARNING, logger="distill_lab.distill.resume"):
        result = train(other, other_split, other_split, LABELS[:5], RECIPE, Objective(), resume=point)
    assert result.resumed_from == 0 and result.steps == 3
    assert "is unusable" in caplog.text and "tensors differ" in caplog.text


def test_a_short_run_never_writes_a_point(tmp_path):
    split = _split()
    point = _point(tmp_path, minutes=10.0)
    train(_model(), split, split, LABELS, RECIPE, Objective(), resume=point)
    assert not point.path.exists() and list(tmp_path.glob("*.pt")) == []


def test_a_second_process_trains_without_the_point_another_holds(tmp_path):
    point = _point(tmp_path)
    code = ("import sys; from pathlib import Path; from distill_lab.distill.resume import ResumePoint; "
            "sys.exit(0 if ResumePoint('run-test', 0.0, directory=Path(sys.argv[1])).acquire() else 3)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 3
    point.release()
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


def _config(*overrides: str):
    return resolve(parse_spec(TINY_RUN, ["training.epochs=3", "training.eval_every=2", *overrides], source="test"))


def test_the_key_names_the_run_and_its_teacher_not_how_it_is_run():
    config = _config()
    key = resume.resume_key(config, "teacher-a")
    assert resume.resume_key(_config("training.num_threads=1", "training.resume_every_minutes=1"), "teacher-a") == key
    assert resume.resume_key(_config("training.seed=14"), "teacher-a") != key
    assert resume.resume_key(_config("distill.temperature=3"), "teacher-a") != key
    assert resume.resume_key(config, "teacher-b") != key
    assert resume.for_run(_config("training.resume_every_minutes=0"), "teacher-a") is None


def test_a_run_keeps_its_point_for_the_caller_and_a_rerun_only_scores(monkeypatch):
    config = _config("training.resume_every_minutes=1e-9")  # a point at every step
    kept = run_distillation(config, keep_resume=True)
    assert kept.resume_point is not None and kept.resume_point.path.exists()
    again = run_distillation(config)  # what a re-queued trial does for a seed that had finished
    assert again.train_result.resumed_from == kept.train_result.steps > 0
    assert again.dev.f1 == kept.dev.f1 and again.test.f1 == kept.test.f1
    assert again.resume_point is None and not kept.resume_point.path.exists()  # a plain run discards it
    assert list((home_dir() / "resume").glob("run-*.pt")) == []


def test_a_point_that_cannot_be_written_leaves_the_run_training(tmp_path, monkeypatch, caplog):
    def full_disk(state, path):
        open(path, "wb").close()  # a partial file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", full_disk)
    split = _split()
    with caplog.at_level(logging.WARNING, logger="distill_lab.distill.resume"):
        result = train(_model(), split, split, LABELS, RECIPE, Objective(), resume=_point(tmp_path))
    assert result.steps == 6 and "not written" in caplog.text and "No space left" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-test.pt.lock"]  # no point, no partial file


def test_a_killed_teacher_fine_tune_resumes_to_the_same_teacher():
    import shutil

    from distill_lab import teacher as teachers
    from distill_lab.data.loader import load_corpus

    config = _config("teacher.finetune.seed=77", "training.resume_every_minutes=1e-9")  # a teacher no test shares
    corpus = load_corpus(config.data)
    cpu = torch.device("cpu")
    with pytest.raises(Killed):
        teachers.prepare_teacher(config, corpus, device=cpu, progress=_kill_at(4))
    assert len(list((home_dir() / "resume").glob("finetune-*.pt"))) == 1
    resumed = teachers.prepare_teacher(config, corpus, device=cpu)
    assert list((home_dir() / "resume").glob("finetune-*.pt")) == []  # discarded once the teacher is published
    weights = _weights(resumed.model)

    shutil.rmtree(resumed.directory)  # the same fine-tune again, uninterrupted
    teachers._LOADED.clear()
    whole = teachers.prepare_teacher(_config("teacher.finetune.seed=77", "training.resume_every_minutes=0"),
                                     corpus, device=cpu)
    assert whole.fingerprint == resumed.fingerprint and whole.reused is False
    assert (whole.dev_f1, whole.test_f1) == (resumed.dev_f1, resumed.test_f1)
    assert all(torch.equal(whole.model.state_dict()[k], v) for k, v in weights.items())
