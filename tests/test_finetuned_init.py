"""Init strategy `finetuned` and `student.num_layers`: a student cut from its own fine-tuned model,
distilled from a teacher of another family (the fine-tune cached and shared like a teacher's)."""

from __future__ import annotations

import pytest
import torch

from distill_lab import models, naming
from distill_lab.data.loader import load_corpus
from distill_lab.errors import SpecError
from distill_lab.pipeline import build_student, run_distillation
from distill_lab.plan import load_plan
from distill_lab.spec import parse_spec, resolve
from distill_lab.teacher import prepare_init_source, prepare_teacher
from tiny_specs import tiny_run

CPU = torch.device("cpu")
OWN_RECIPE = "{epochs: 2, learning_rate: 3.0e-3, batch_size: 16, seed: 5}"
# An MPNet teacher distils into the first two layers of a fine-tuned BERT.
FINETUNED = [f"student={{model: tiny-bert, num_layers: 2, init: {{strategy: finetuned, layers: first, "
             f"finetune: {OWN_RECIPE}}}}}"]


def _config(*overrides: str, teacher: str = "tiny-mpnet"):
    return resolve(parse_spec(tiny_run("unit-finetuned", teacher=teacher), list(overrides), source="test"))


@pytest.mark.parametrize("student, message", [
    ("{from_teacher: {num_layers: 2}, init: {strategy: finetuned}}", "init strategy 'finetuned' fine-tunes the student's own 'model'"),
    ("{model: tiny-bert, init: {strategy: pretrained, finetune: {epochs: 1}}}", "'finetune' only applies to strategy 'finetuned', not 'pretrained'"),
    ("{from_teacher: {num_layers: 2}, num_layers: 2}", "'num_layers' needs the student's own 'model'"),
])
def test_spec_refuses_finetuned_init_and_num_layers_where_they_mean_nothing(student, message):
    with pytest.raises(SpecError, match=message):
        _config(f"student={student}")


def test_finetuned_init_gets_the_default_recipe_and_the_plan_cuts_the_own_model():
    config = _config("student={model: tiny-bert, num_layers: 3, init: {strategy: finetuned, layers: uniform}}")
    assert config.student.init.finetune is not None
    assert config.student.init.finetune.epochs == 1.0 and config.student.init.finetune.learning_rate == 5e-5
    plan = load_plan(config)
    assert (plan.n_teacher, plan.n_student, plan.init_layers) == (4, 3, (0, 2, 3))
    with pytest.raises(SpecError, match=r"student\.num_layers: 5 exceeds tiny-bert's 4 layers"):
        load_plan(_config("student={model: tiny-bert, num_layers: 5, init: {strategy: finetuned}}"))
    # random init may be deeper than the model it is shaped like
    assert load_plan(_config("student={model: tiny-bert, num_layers: 5, init: {strategy: random}}")).n_student == 5


def test_finetuned_init_copies_the_own_fine_tuned_model_and_is_shared_with_a_teacher_of_that_recipe(
        monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path))
    config = _config(*FINETUNED)
    corpus = load_corpus(config.data)
    source = prepare_init_source(config, corpus, device=CPU)
    assert source.reused is False and source.ref.reference == "tiny-bert"
    assert models.num_layers(source.model) == 4 and 0.0 <= source.dev_f1 <= 1.0
    # the same model and recipe as a teacher: the same fine-tune, read back from the same directory
    as_teacher = prepare_teacher(_config(f"teacher.finetune={OWN_RECIPE}", teacher="tiny-bert"), corpus, device=CPU)
    assert as_teacher.directory == source.directory and as_teacher.fingerprint == source.fingerprint
    assert as_teacher.reused is True

    teacher = prepare_teacher(config, corpus, device=CPU)
    assert teacher.ref.reference == "tiny-mpnet" and teacher.directory != source.directory
    student, tokenizer, report = build_student(config, teacher, corpus.labels, init_source=source)
    assert models.num_layers(student) == 2 and tokenizer.get_vocab() == source.tokenizer.get_vocab()
    assert report.strategy == "finetuned" and report.layer_pairs == ((0, 0), (1, 1))
    assert report.source.startswith("fine-tuned Tiny-Bert (dev F1 ") and report.classifier_copied
    theirs, ours = source.model.state_dict(), student.state_dict()
    for key, value in ours.items():
        if ".layer.2." in key or ".layer.3." in key:
            continue
        assert torch.equal(value, theirs[key]), key  # embeddings, layers 0 / 1 and the classifier
    assert not any(".layer.2." in key for key in ours)


def test_run_with_finetuned_init_fine_tunes_the_own_model_once(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path))
    config = _config(*FINETUNED)
    stages: list[str] = []
    first = run_distillation(config, stage=lambda name, done, total: stages.append(name))
    assert set(stages) == {"teacher fine-tune", "student init fine-tune", "distill"}
    summary = first.summary()
    assert summary["student"]["layers"] == 2 and summary["student"]["init"] == "finetuned"
    assert summary["student"]["init_layers"] == [0, 1] and summary["teacher"]["model"] == "tiny-mpnet"
    assert naming.init_name(config) == "fine-tuned own weights"
    assert first.train_result.history[-1]["loss_soft"] > 0  # the MPNet teacher's word-level soft targets
    stages.clear()
    second = run_distillation(config, stage=lambda name, done, total: stages.append(name))
    assert set(stages) == {"distill"}  # both fine-tunes reused from their directories
    assert second.dev.f1 == first.dev.f1


def test_study_fine_tunes_the_own_model_before_its_workers_and_names_the_student(monkeypatch, tmp_path):
    import io

    from rich.console import Console

    from distill_lab import study as driver
    from distill_lab.study_runner import run_study
    from distill_lab.tracking import Tracker
    from tiny_specs import tiny_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILL_LAB_HOME", str(tmp_path / "home"))
    raw = tiny_study("unit_finetuned", n_trials=1)
    raw["teacher"]["model"] = "tiny-mpnet"
    raw["student"] = {"model": "tiny-bert", "num_layers": 2,
                      "init": {"strategy": "finetuned", "layers": "first", "finetune": {"epochs": 1}}}
    spec = parse_spec(raw, source="test")
    assert driver.layer_counts(spec) == (4, 2)
    ctx = driver.StudyContext(spec=spec, storage_url=str(tmp_path / "optuna.journal"),
                              tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", n_trials=1, n_teacher=4, n_student=2)
    text = io.StringIO()
    assert run_study(ctx, workers=1, console=Console(file=text, width=200), out=Console(file=text, width=200)) == 0
    assert "student init fine-tune" in text.getvalue()
    fine_tunes = sorted(path.parent.name for path in (tmp_path / "home" / "teachers").glob("*/teacher.json"))
    assert len(fine_tunes) == 2  # the MPNet teacher and the student's own BERT, each once
    study = driver.load_study("unit_finetuned", ctx.storage_url)
    client = Tracker(ctx.tracking_uri).client
    runs = client.search_runs([study.user_attrs["mlflow_experiment_id"]], "tags.role = 'trial'")
    assert len(runs) == 1
    tags, params = runs[0].data.tags, runs[0].data.params
    assert tags["student_model"] == "tiny-bert (2 layers)" and params["student.init.strategy"] == "finetuned"
    assert params["student.num_layers"] == "2" and params["student.init.finetune.epochs"] == "1.0"
