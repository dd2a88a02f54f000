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


def _reference_store(path, seeds, teacher_start):
    """A store of one machine: a teacher run and one reference run per seed (as the bench logs them)."""
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("textbrewer_recipe")
    teacher = client.create_run(experiment, run_name="teacher", start_time=teacher_start,
                                tags={"role": "teacher", "teacher_fingerprint": "899427c1"})
    client.log_metric(teacher.info.run_id, "dev_f1", 0.9086)
    ids = {}
    for seed in seeds:
        run = client.create_run(experiment, run_name=f"textbrewer seed {seed}", start_time=teacher_start + seed,
                                tags={"role": "reference", "seeds": str(seed)})
        client.log_metric(run.info.run_id, f"dev_f1_seed{seed}", 0.89 + seed / 1000)
        ids[seed] = run.info.run_id
    return uri, teacher.info.run_id, ids


def test_export_merge_keeps_runs_made_on_another_machine_and_one_teacher_per_fingerprint(tmp_path):
    first_uri, first_teacher, first = _reference_store(tmp_path / "a.db", [1], teacher_start=1_000)
    out = tmp_path / "records"
    export_experiment("textbrewer_recipe", first_uri, out)
    second_uri, _, second = _reference_store(tmp_path / "b.db", [2, 3], teacher_start=2_000)

    path = export_experiment("textbrewer_recipe", second_uri, out, merge=True)
    runs = {r["run_id"]: r for r in load(path)["runs"]}
    # Seed 1 from the first machine, seeds 2 and 3 from the second; the second machine's teacher
    # (same fingerprint, the same deterministic fine-tune) is dropped for the earlier one.
    assert set(runs) == {first_teacher, first[1], second[2], second[3]}
    assert sorted(r["tags"]["seeds"] for r in runs.values() if r["tags"]["role"] == "reference") == ["1", "2", "3"]
    merged = path.read_bytes()
    assert export_experiment("textbrewer_recipe", second_uri, out, merge=True).read_bytes() == merged  # idempotent
    # Without --merge the file is the store alone.
    runs = {r["run_id"] for r in load(export_experiment("textbrewer_recipe", second_uri, out))["runs"]}
    assert len(runs) == 3 and set(second.values()) <= runs and first[1] not in runs and first_teacher not in runs
