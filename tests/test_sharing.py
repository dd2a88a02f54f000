"""A worker's trials and seeds share what does not change between them: the loaded teacher and the
tokenised splits of a shared corpus. Sharing must not change a single score."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from distill_lab import pipeline, teacher as teacher_module
from distill_lab.data.loader import load_corpus
from distill_lab.pipeline import run_distillation
from distill_lab.spec import parse_spec, resolve
from tiny_specs import tiny_run

CPU = torch.device("cpu")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(teacher_module, "_LOADED", {})
    monkeypatch.setattr(teacher_module, "_ATTENTION", {})
    monkeypatch.setattr(pipeline, "_ENCODED", {})
    return tmp_path / "home"


def _config(seed: int = 1, **distill):
    spec = tiny_run("sharing")
    spec["training"]["seed"] = seed
    spec["training"]["speed_sentences"] = 0
    spec["distill"].update(distill)
    return resolve(parse_spec(spec))


def test_prepare_teacher_returns_the_loaded_teacher_again_marked_reused(home):
    config = _config()
    corpus = load_corpus(config.data)
    first = teacher_module.prepare_teacher(config, corpus, device=CPU)
    second = teacher_module.prepare_teacher(config, corpus, device=CPU)
    assert first.reused is False and second.reused is True
    assert second.model is first.model and second.fingerprint == first.fingerprint
    assert second.dev_f1 == first.dev_f1 and not second.model.training
    # A teacher whose directory is gone is fine-tuned again, not served from memory.
    shutil.rmtree(first.directory)
    third = teacher_module.prepare_teacher(config, corpus, device=CPU)
    assert third.reused is False and third.model is not first.model


def test_a_shared_teacher_gets_its_attention_implementation_back(home):
    config = _config()
    corpus = load_corpus(config.data)
    first = teacher_module.prepare_teacher(config, corpus, device=CPU)
    original = first.model.config._attn_implementation
    first.model.set_attn_implementation("eager")  # what an attention-loss trial does
    again = teacher_module.prepare_teacher(config, corpus, device=CPU)
    assert again.model.config._attn_implementation == original != "eager"


def test_runs_on_a_shared_corpus_reuse_its_splits_and_score_as_fresh_runs(home):
    corpus = load_corpus(_config().data)
    shared = [run_distillation(_config(seed), corpus=corpus) for seed in (1, 2)]
    assert len(pipeline._ENCODED) == 1  # one corpus, one tokenizer: encoded once for both seeds
    (_, splits), = pipeline._ENCODED.values()
    assert shared[0].teacher.model is shared[1].teacher.model
    fresh = [run_distillation(_config(seed)) for seed in (1, 2)]  # no shared corpus: encoded per run
    assert len(pipeline._ENCODED) == 1
    for kept, alone in zip(shared, fresh):
        assert kept.dev.f1 == alone.dev.f1 and kept.test.f1 == alone.test.f1
        assert kept.dev_predictions == alone.dev_predictions
    assert shared[0].dev_predictions != [] and len(splits["dev"]) == len(corpus.dev)


def test_a_changed_training_text_is_encoded_again(home):
    corpus = load_corpus(_config().data)
    gold = run_distillation(_config(), corpus=corpus)
    spec = tiny_run("sharing")
    spec["training"]["speed_sentences"] = 0
    spec["data"]["augment"] = {"copies": 1}
    augmented = run_distillation(resolve(parse_spec(spec)), corpus=corpus)
    assert len(pipeline._ENCODED) == 2
    # 48 gold sentences at batch 16: 3 steps; with one swapped copy of each, 6
    assert (gold.train_result.steps, augmented.train_result.steps) == (3, 6)
