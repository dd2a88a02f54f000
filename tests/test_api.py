"""The public Python API, used only through `import distill_lab` (as a notebook would)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoModelForTokenClassification

import distill_lab
from tiny_specs import tiny_study

TINY = tiny_study("api_study", n_trials=2)


def test_api_exposes_its_names_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, distill_lab; print(sorted(distill_lab.__all__)); print('torch' in sys.modules)"
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert lines[0] == str(["DistillLabError", "export", "load_spec", "load_student", "report", "run", "run_study"])
    assert lines[1] == "False"


def test_load_spec_applies_mapping_and_string_overrides(tmp_path):
    spec = distill_lab.load_spec(TINY, {"distill.temperature": 8, "training__epochs": 1})
    assert (spec.distill.temperature, spec.training.epochs) == (8.0, 1.0)
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    assert distill_lab.load_spec(path, ["distill.alpha_soft=0.25"]).distill.alpha_soft == 0.25
    assert distill_lab.load_spec(spec, {"distill.alpha_hard": 1.0}).distill.temperature == 8.0


def test_load_spec_refuses_unknown_keys_and_bad_sources():
    with pytest.raises(distill_lab.DistillLabError, match="distill.temprature"):
        distill_lab.load_spec(TINY, {"distill.temprature": 8})
    with pytest.raises(distill_lab.DistillLabError, match="not the string"):
        distill_lab.load_spec(TINY, "distill.temperature=8")
    with pytest.raises(distill_lab.DistillLabError, match="not int"):
        distill_lab.load_spec(42)


def test_run_export_and_load_student_agree_with_the_scored_predictions(tmp_path):
    result = distill_lab.run(TINY, **{"distill.temperature": 4})
    assert result.config.distill.temperature == 4.0
    assert 0.0 < result.dev.f1 <= 1.0 and 0.0 <= result.test.f1 <= 1.0
    assert result.summary()["student"]["dev_f1"] == result.dev.f1
    directory = distill_lab.export(result, tmp_path / "student")
    model = AutoModelForTokenClassification.from_pretrained(directory)
    assert list(model.config.id2label.values()) == list(result.labels)
    assert "| 13 |" in (directory / "README.md").read_text()  # the run's seed and its scores
    ner = distill_lab.load_student(directory)
    compared = 0
    for sentence, predicted in zip(result.dev_sentences, result.dev_predictions):
        if any(len(token) > 1 and not token.isalnum() for token in sentence.tokens):
            continue  # the pipeline's pre-tokenizer splits "2-1" or "Saint-Germain" into more words
        text = " ".join(sentence.tokens)
        starts = [len(" ".join(sentence.tokens[:i])) + (i > 0) for i in range(len(sentence.tokens))]
        ends = [start + len(token) for start, token in zip(starts, sentence.tokens)]
        scored = [(kind, starts[first], ends[last]) for kind, first, last in get_entities(list(predicted))]
        # Whole-word entities, exactly the ones the student was scored with.
        assert [(e["entity_group"], e["start"], e["end"]) for e in ner(text)] == scored
        compared += 1
    assert compared >= 10


def test_run_study_report_and_export_of_the_best_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = distill_lab.run_study(TINY, storage=str(tmp_path / "optuna.journal"), tracking_uri=uri)
    assert len(study.trials) == 2 and study.best_trial.value > 0
    table = distill_lab.report("api_study", tracking_uri=uri)
    students = table[~table["reference"]]
    assert sorted(students["dev_f1_mean"]) == pytest.approx(sorted(t.value for t in study.trials))
    directory = distill_lab.export("api_study", tmp_path / "best", storage=str(tmp_path / "optuna.journal"),
                                   tracking_uri=uri)
    assert f"api_study trial {study.best_trial.number}" in (directory / "README.md").read_text()
    with pytest.raises(distill_lab.DistillLabError, match="no study named"):
        distill_lab.report("missing", tracking_uri=uri)
