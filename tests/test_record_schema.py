"""The run-record contract: what a writer logs through a record, a reader gets back from the store."""

from __future__ import annotations

import pytest
from fake_runs import new_store

from distill_lab.record_schema import (
    OPTUNA_STATE,
    StudyRecord,
    TeacherRecord,
    TrialRecord,
    TrialStart,
    finished_trials,
)
from distill_lab.records import load_runs
from distill_lab.tracking import RunHandle, Tracker


@pytest.fixture
def tracker(tmp_path):
    return Tracker(new_store(tmp_path))


def _trial(tracker: Tracker, experiment_id: str, parent: str, number: int, state: str, dev: dict[int, float],
           setting: str = "T=4 a=0.2/0.8/0") -> str:
    start = TrialStart(study="s", trial_number=number, optuna_trial_id=number + 10, setting=setting,
                       init="pretrained weights", mapping="uniform")
    with tracker.run(experiment_id, f"t{number}", tags=start.to_mlflow(), parent_run_id=parent) as run:
        run.log_params({"distill.temperature": 4.0, "distill.alpha_soft": 0.8})
        tags, metrics = TrialRecord(teacher="MiniLM-L6 (6 layers)", student="3 layers, init=pretrained",
                                    student_model="MiniLM (3 layers)", teacher_fingerprint="fp",
                                    dev_f1=dev, test_f1={seed: f - 0.05 for seed, f in dev.items()},
                                    summary={"best_dev_f1": sum(dev.values()) / len(dev), "student_params": 17.0},
                                    extra_tags={"diagnosis": "ok"}).to_mlflow()
        run.log_metrics(metrics, step=100)
        run.set_tags({**tags, OPTUNA_STATE: state})
        return run.run_id


def test_what_the_writers_log_is_what_the_readers_read(tracker):
    experiment_id = tracker.ensure_experiment("s")
    study = StudyRecord(study="s", optuna_storage="postgresql://u:***@db/optuna", description="does T matter?")
    parent = tracker.create_run(experiment_id, "study s", tags=study.to_mlflow())
    RunHandle(tracker.client, parent).log_params(StudyRecord.params(
        {"n_trials": 2, "search_space": {"distill.temperature": {"type": "grid", "values": [2, 4]}}}))
    teacher_tags, teacher_metrics = TeacherRecord(study="s", fingerprint="fp", teacher="MiniLM-L6 (6 layers)",
                                                  dev_f1=0.9086, test_f1=0.8648, params=22_713_225).to_mlflow()
    with tracker.run(experiment_id, "teacher", tags=teacher_tags, parent_run_id=parent) as run:
        run.log_metrics(teacher_metrics)
    done = _trial(tracker, experiment_id, parent, 0, "COMPLETE", {1: 0.90, 2: 0.80})
    _trial(tracker, experiment_id, parent, 1, "PRUNED", {1: 0.99})  # a pruned trial's run ends FINISHED too

    runs = load_runs(tracker.uri, ["s"])
    assert list(finished_trials(runs)["run_id"]) == [done]
    rows = TrialRecord.from_runs(runs).sort_values("seed")
    assert rows["run_id"].tolist() == [done, done] and rows["seed"].tolist() == [1, 2]
    assert rows["dev_f1"].tolist() == pytest.approx([0.90, 0.80])
    assert rows["test_f1"].tolist() == pytest.approx([0.85, 0.75])
    assert rows["setting"].unique().tolist() == ["T=4 a=0.2/0.8/0"] and rows["init"].iloc[0] == "pretrained weights"
    assert rows["temperature"].tolist() == [4.0, 4.0] and rows["alpha_soft"].iloc[0] == 0.8
    assert rows["student_model"].iloc[0] == "MiniLM (3 layers)" and rows["diagnosis"].iloc[0] == "ok"
    teachers = TeacherRecord.from_runs(runs)
    assert teachers[["study", "teacher", "dev_f1", "test_f1", "params"]].values.tolist() == [
        ["s", "MiniLM-L6 (6 layers)", 0.9086, 0.8648, 22_713_225.0]]
    assert StudyRecord.search_space(runs, "s") == {"distill.temperature": {"type": "grid", "values": [2, 4]}}
    assert StudyRecord.search_space(runs, "other") is None


def test_a_retried_trial_links_to_the_dead_worker_s_run():
    first = TrialStart(study="s", trial_number=3, optuna_trial_id=7, setting="x", init="i", mapping="m").to_mlflow()
    retry = TrialStart(study="s", trial_number=5, optuna_trial_id=9, setting="x", init="i", mapping="m",
                       retry_of_run="abc", retry_of_trial=3).to_mlflow()
    assert "retry_of_run" not in first and first[OPTUNA_STATE] == "RUNNING"
    assert (retry["retry_of_run"], retry["retry_of_trial"]) == ("abc", 3)
    # Trial 0 of a study is a real trial to link to, not "no retry".
    assert TrialStart(study="s", trial_number=1, optuna_trial_id=2, setting="x", init="i", mapping="m",
                      retry_of_run="r0", retry_of_trial=0).to_mlflow()["retry_of_trial"] == 0
