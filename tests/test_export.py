"""Getting the student out: model directory + card, the pipeline's aggregation, re-training from the
record, the best student as an MLflow Model (one best tag per study) and its registration."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, AutoTokenizer

from distill_lab import cli, models
from distill_lab import study as driver
from distill_lab.student_export import export_trial
from distill_lab.record_schema import BEST_STUDENT, LEGACY_BEST, STUDENT_MODEL
from distill_lab.spec import parse_spec
from distill_lab.student_card import save_student, student_pipeline
from distill_lab.study_runner import run_study, study_context
from distill_lab.tracking import using_tracking_uri
from tiny_specs import tiny_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# A student that learns a little in a few steps (as tests/test_study.py's), two trials, two seeds.
SPEC = tiny_study("export_study", n_trials=2, seeds=[5, 6])


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.chdir(tmp_path)
    return SimpleNamespace(dir=tmp_path, journal=str(tmp_path / "optuna.journal"),
                           uri=f"sqlite:///{tmp_path}/mlflow.db")


def _study(store: SimpleNamespace, **options) -> optuna.Study:
    spec = parse_spec(SPEC, source="test")
    ctx = study_context(spec, storage=store.journal, tracking_uri=store.uri, **options)
    text = io.StringIO()
    code = run_study(ctx, workers=1, console=Console(file=text, width=200), out=Console(file=text, width=200))
    assert code == 0, text.getvalue()
    return driver.load_study("export_study", store.journal)


def _b_per_student(tokenizer_ref: str) -> tuple[torch.nn.Module, object]:
    """A 1-layer student of the packaged model's shape that tags every sub-token B-PER."""
    ref = models.resolve_reference(tokenizer_ref)
    config = models.student_config_from_teacher(models.load_config(ref), num_layers=1)
    student = models.token_classifier_from_config(config, LABELS)
    with torch.no_grad():
        student.classifier.weight.zero_()
        student.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0]))
    return student, models.load_tokenizer(ref, config.model_type)


def test_student_pipeline_first_aggregation_keeps_a_split_word_one_entity(tmp_path):
    student, tokenizer = _b_per_student("minilm-l6")
    sentence = "Arnold Schwarzenegger visited Washington"
    assert len(tokenizer.tokenize("Schwarzenegger")) >= 3  # one word, several sub-tokens
    directory = save_student(student, tokenizer, tmp_path / "student")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["task_specific_params"]["token-classification"]["aggregation_strategy"] == "first"
    entities = student_pipeline(directory)(sentence)
    # Every word is one B-PER entity: the split word too, spanning exactly that word.
    assert [e["word"] for e in entities] == ["arnold", "schwarzenegger", "visited", "washington"]
    assert [sentence[e["start"]:e["end"]] for e in entities] == sentence.split()
    assert {e["entity_group"] for e in entities} == {"PER"}
    # What the issue saw: "simple" reads every sub-token and splits the word into several entities.
    simple = student_pipeline(directory, aggregation_strategy="simple")(sentence)
    assert len(simple) > len(entities)


def test_save_student_refuses_a_slow_tokenizer(tmp_path):
    student, tokenizer = _b_per_student("tiny-bert")
    slow = SimpleNamespace(is_fast=False)
    with pytest.raises(Exception, match="fast tokenizer is needed"):
        save_student(student, slow, tmp_path / "student")
    assert not (tmp_path / "student").exists()
    assert tokenizer.is_fast


def test_export_retrains_the_trial_to_its_recorded_dev_f1_and_writes_a_loadable_directory(store, capsys):
    study = _study(store)
    trial = study.trials[1]
    out = store.dir / "exported"
    code = cli.app(["export", "export_study", "--trial", "1", "--out", str(out), "--storage", store.journal,
                    "--tracking-uri", store.uri], standalone_mode=False)
    assert code in (0, None)
    printed = capsys.readouterr().out
    recorded = trial.user_attrs["dev_f1_per_seed"]["5"]
    assert f"recorded {recorded:.4f}" in printed and "NOT the same" not in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))  # safetensors only
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.label2id["O"] == 0 and len(model.config.id2label) == 9
    card = (out / "README.md").read_text()
    assert 'aggregation_strategy="first"' in card
    for seed in (5, 6):  # both seeds' recorded scores, in F1 points
        assert f"| {seed} | {trial.user_attrs['dev_f1_per_seed'][str(seed)] * 100:.2f} |" in card
    assert "name: export_study" in card and "distill.temperature" in card and "tiny-bert" in card
    run = MlflowClient(store.uri).get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
    assert (f"student {run['student_sentences_per_s']:.0f} vs teacher {run['teacher_sentences_per_s']:.0f} "
            f"sentences/s, {run['speedup']:.2f}x") in card  # the trial's measured inference speed
    # Same spec, params and seed: the same weights, whichever way they are obtained again.
    again = export_trial("export_study", store.dir / "again", trial_number=1, storage_url=store.journal,
                         tracking_uri=store.uri)
    assert again.reproduced is True and again.dev_f1 == pytest.approx(recorded, abs=1e-12)
    first, second = load_file(out / "model.safetensors"), load_file(store.dir / "again" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_save_best_logs_only_the_final_best_student_and_registers_it(store):
    study = _study(store, register="unit-student")
    best = driver.best_trial(study)
    client = MlflowClient(store.uri)
    experiment = study.user_attrs["mlflow_experiment_id"]
    tagged = client.search_runs([experiment], f"tags.{BEST_STUDENT} != ''")
    assert [run.info.run_id for run in tagged] == [best.user_attrs["mlflow_run_id"]]
    assert not client.search_runs([experiment], f"tags.{LEGACY_BEST} != ''")
    model_uri = tagged[0].data.tags[STUDENT_MODEL]
    versions = client.search_model_versions("name = 'unit-student'")
    assert [(str(v.version), v.source) for v in versions] == [("1", model_uri)]
    # The logged model answers with whole-word entities (its inference config sets "first").
    import mlflow

    with using_tracking_uri(store.uri):
        components = mlflow.transformers.load_model(model_uri, return_type="components")
    assert components["model"].config.task_specific_params["token-classification"]["aggregation_strategy"] == "first"
    # export --best reads the logged model back instead of re-training.
    exported = export_trial("export_study", store.dir / "best", best=True, storage_url=store.journal,
                            tracking_uri=store.uri)
    assert exported.trial == best.number and exported.weights == f"MLflow Model {model_uri}"
    assert exported.reproduced is None
    assert AutoTokenizer.from_pretrained(store.dir / "best").is_fast
