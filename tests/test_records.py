"""Run-record export: every run of a study, through MLflow's API, as stable JSON."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from distill_lab.cli import app
from distill_lab.records import RecordsError, export_experiment, load


@pytest.fixture(scope="module")
def store(tmp_path_factory):  # one store for the module: creating an MLflow sqlite store takes seconds
    uri = f"sqlite:///{tmp_path_factory.mktemp('records') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("headline")
    parent = client.create_run(experiment, run_name="study", tags={"role": "study"})
    child = client.create_run(experiment, run_name="trial 0",
                              tags={"role": "trial", "trial_number": "0", "mlflow.parentRunId": parent.info.run_id})
    client.log_param(child.info.run_id, "distill.temperature", "8.0")
    for step, value in ((440, 0.81), (880, 0.86), (1317, 0.875)):
        client.log_metric(child.info.run_id, "dev_f1", value, step=step)
        client.log_metric(child.info.run_id, "seed2_dev_f1", value - 0.01, step=step)
    client.log_metric(child.info.run_id, "test_f1", 0.8312345678, step=1317)
    client.set_terminated(child.info.run_id)
    return uri, parent.info.run_id, child.info.run_id


def test_export_has_every_run_with_params_tags_metrics_and_curves(store, tmp_path):
    uri, parent_id, child_id = store
    path = export_experiment("headline", uri, tmp_path / "records")
    payload = load(path)
    runs = {r["run_id"]: r for r in payload["runs"]}
    assert set(runs) == {parent_id, child_id}
    child = runs[child_id]
    assert child["parent_run_id"] == parent_id and runs[parent_id]["parent_run_id"] is None
    assert child["params"] == {"distill.temperature": "8.0"}
    assert child["tags"] == {"role": "trial", "trial_number": "0"}  # mlflow.* tags dropped
    assert child["metrics"]["test_f1"] == 0.831235 and child["metrics"]["dev_f1"] == 0.875
    assert child["history"]["dev_f1"] == [[440, 0.81], [880, 0.86], [1317, 0.875]]
    assert child["history"]["seed2_dev_f1"][-1] == [1317, 0.865]
    assert "test_f1" not in child["history"]
    assert child["status"] == "FINISHED"
    first = path.read_bytes()
    export_experiment("headline", uri, tmp_path / "records")
    assert path.read_bytes() == first  # same store -> byte-identical export


def test_unknown_experiment_and_bad_files_are_one_line_errors(store, tmp_path):
    uri, _, _ = store
    with pytest.raises(RecordsError, match=r"no MLflow experiment 'nope' .*known: .*headline"):
        export_experiment("nope", uri, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(RecordsError, match="format 99, expected 1"):
        load(bad)


def test_cli_records_export(store, tmp_path):
    uri, _, child_id = store
    result = CliRunner().invoke(app, ["records", "export", "headline", "--out", str(tmp_path / "r"),
                                      "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert child_id in (tmp_path / "r" / "headline.json").read_text()
