"""The Optuna driver end to end: MLflow run structure, resume, failures, interrupts, workers, kill -9.

Every study here is tiny (tiny-bert teacher, 2-layer student, 60/20/20 synthetic sentences) so a
trial takes well under a second once the teacher is cached. Each test gets its own Optuna journal
and its own MLflow sqlite store in tmp_path (a copy of one empty, already migrated store).
"""

from __future__ import annotations

import copy
import io
import re
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from rich.console import Console

from distill_lab import naming, pipeline, search_space, signals
from distill_lab import study as driver
from distill_lab.study import objective, optuna_compat, workers
from distill_lab.errors import DistillLabError, SpecError
from distill_lab.paths import home_dir
from distill_lab.spec import parse_spec, set_dotted
from distill_lab.signals import reset_interrupts, worker_interrupts
from distill_lab.study_runner import run_study
from distill_lab.tracking import PARENT_TAG, Tracker
from tiny_specs import tiny_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A teacher and student that learn a little in a few steps, so F1 values are not all 0.
BASE: dict[str, Any] = tiny_study("unit_study", pruner="none", search_space={
    "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0, "log": True}})
STEP_METRICS = ("dev_f1", "loss_total", "loss_hard", "loss_soft", "learning_rate")
FINAL_METRICS = ("best_dev_f1", "test_f1", "train_sample_f1", "teacher_dev_f1", "retention", "student_params",
                 "teacher_params", "compression", "tokens_per_second", "wall_seconds", "student_sentences_per_s",
                 "teacher_sentences_per_s", "speedup")
TRIAL_TAGS = ("study", "trial_number", "teacher", "student", "init", "setting", "optuna_state")
ARTIFACTS = {"config.yaml", "classification_report.txt", "per_type_f1.json", "confusion_matrix.png",
             "sample_predictions.tsv"}
CLI_TIMEOUT = 300  # generous: a loaded 2-core machine; a healthy run takes a fraction


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, migrated once (creating one costs seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _restore_process_state():
    # Driver code sets torch's thread count and a SIGTERM handler for the whole process.
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    sigint = signal.getsignal(signal.SIGINT)
    yield
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, sigint)
    reset_interrupts()  # an interrupt a test sent itself must not stop the next test's worker loop


@pytest.fixture
def store(tmp_path: Path, _mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A private Optuna journal and MLflow store; cwd is tmp_path (MLflow puts artifacts under it)."""
    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return SimpleNamespace(dir=tmp_path, journal=str(tmp_path / "optuna.journal"),
                           uri=f"sqlite:///{tmp_path}/mlflow.db")


def _raw(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for key, value in (changes or {}).items():
        set_dotted(raw, key, value)
    return raw


def _spec(changes: dict[str, Any] | None = None):
    return parse_spec(_raw(changes), source="test")


def _ctx(spec, store: SimpleNamespace, n_trials: int | None = None) -> driver.StudyContext:
    n_teacher, n_student = driver.layer_counts(spec)
    return driver.StudyContext(spec=spec, storage_url=store.journal, tracking_uri=store.uri,
                               n_trials=driver.target_trials(spec, n_trials), n_teacher=n_teacher,
                               n_student=n_student)


def _run(ctx: driver.StudyContext) -> tuple[int, str]:
    """`study run` in-process: returns (exit code, everything it printed)."""
    text = io.StringIO()
    code = run_study(ctx, workers=1, console=Console(file=text, width=200), out=Console(file=text, width=200))
    return code, text.getvalue()


def _load(store: SimpleNamespace, name: str = "unit_study") -> optuna.Study:
    return driver.load_study(name, store.journal)


def _client(store: SimpleNamespace):
    return Tracker(store.uri).client


def _runs(store: SimpleNamespace, study: optuna.Study, filter_string: str = "") -> list[Any]:
    return _client(store).search_runs([study.user_attrs["mlflow_experiment_id"]], filter_string=filter_string,
                                      max_results=1000)


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _write_spec(directory: Path, changes: dict[str, Any] | None = None, raw: dict[str, Any] | None = None) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(raw if raw is not None else _raw(changes), sort_keys=False))
    return path


def _cli_env() -> dict[str, str]:
    # DISTILL_LAB_HOME (set by conftest) is inherited: the subprocesses reuse the cached teacher.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill_lab.cli", *args], cwd=cwd, env=_cli_env(),
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- 4. run structure in MLflow
def test_run_study_creates_one_parent_a_teacher_and_one_child_run_per_trial(store):
    ctx = _ctx(_spec(), store)
    code, output = _run(ctx)
    assert code == 0, output
    study = _load(store)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # The study said the first trial showing each diagnosis other than ok, and nothing else.
    first_of_each = {}
    for trial in trials:
        if trial.user_attrs["diagnosis"] != "ok":
            first_of_each.setdefault(trial.user_attrs["diagnosis"], trial.number)
    said = re.findall(r"trial #(\d+) \(.*\): diagnosis (\S+):", output)
    assert said == sorted(((str(n), d) for d, n in first_of_each.items()), key=lambda item: int(item[0]))
    client = _client(store)
    runs = _runs(store, study)
    by_role: dict[str, list[Any]] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("role"), []).append(run)
    assert sorted(by_role) == ["study", "teacher", "trial"]

    (parent,) = by_role["study"]
    assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_complete"] == 3 and parent.data.metrics["n_failed"] == 0
    best = driver.best_trial(study)
    assert parent.data.metrics["best_dev_f1"] == pytest.approx(best.value)
    assert parent.data.params["study.n_trials"] == "3"
    # The experiment says what the study asks and opens on the classic runs view of the MLflow UI.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"].endswith("Searched: distill.temperature.")
    assert (experiment.tags["study"], experiment.tags["teacher"], experiment.tags["student"],
            experiment.tags["data"]) == ("unit_study", "tiny-bert", "2 layers of the teacher", "synthetic")

    (teacher,) = by_role["teacher"]
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert teacher.info.status == "FINISHED"

    children = by_role["trial"]
    assert len(children) == 3
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.info.status for run in runs} == {"FINISHED"}  # nothing left RUNNING
    assert _runs(store, study, "attributes.status = 'RUNNING'") == []

    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        # Optuna <-> MLflow cross-reference, both ways.
        assert tags["trial_number"] == str(trial.number)
        assert tags["optuna_trial_id"] == str(trial._trial_id)
        assert set(TRIAL_TAGS) <= set(tags)
        assert tags["study"] == "unit_study" and tags["optuna_state"] == "COMPLETE"
        assert tags["teacher"] == teacher.data.tags["teacher"] and tags["teacher"].endswith("(4 layers)")
        assert tags["student"] == naming.student_name(2, "teacher")
        assert tags["init"] == naming.INIT_NAMES["teacher"]
        temperature = trial.params["distill.temperature"]
        assert tags["setting"].startswith(f"T={temperature:.3g} a=0.5/0.5/0")
        # Params: the flattened, dotted run config with the sampled value filled in.
        assert float(params["distill.temperature"]) == pytest.approx(temperature)
        assert params["training.learning_rate"] == "0.01" and params["student.from_teacher.num_layers"] == "2"
        assert params["optuna.trial_number"] == str(trial.number)
        # Step metrics: the dev F1 curve (4 evaluations + the final best value) and the losses.
        history = sorted(client.get_metric_history(run.info.run_id, "dev_f1"), key=lambda m: (m.step, m.timestamp))
        assert len(history) >= 2
        assert [m.step for m in history] == [2, 4, 6, 8, 9]  # eval_every=2 over 8 steps, then the best
        assert history[-1].value == pytest.approx(trial.value)
        assert max(m.value for m in history[:-1]) == pytest.approx(trial.value)
        curves = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                   key=lambda m: m.step)] for key in STEP_METRICS[1:]}
        assert {key: len(values) for key, values in curves.items()} == dict.fromkeys(STEP_METRICS[1:], 4)
        # 8 steps, warmup int(0.1 * 8) = 0, then the default linear decay to 0 (logged after steps 2, 4, 6, 8).
        assert curves["learning_rate"] == pytest.approx([1e-2 * (8 - step) / 8 for step in (2, 4, 6, 8)])
        # total = alpha_hard * hard + alpha_soft * soft (no hidden/attention loss here).
        expected_total = [0.5 * h + 0.5 * s for h, s in zip(curves["loss_hard"], curves["loss_soft"])]
        assert curves["loss_total"] == pytest.approx(expected_total, rel=1e-5)
        assert all(value > 0 for value in curves["loss_hard"] + curves["loss_soft"])
        assert set(FINAL_METRICS) <= set(metrics)
        assert metrics["best_dev_f1"] == pytest.approx(trial.value)
        assert trial.user_attrs["dev_f1_per_seed"] == {"13": pytest.approx(trial.value)}
        # The run's diagnosis, on the trial too (for `study run` to say as soon as a trial shows one).
        assert (trial.user_attrs["diagnosis"], trial.user_attrs["diagnosis_advice"]) == (
            tags["diagnosis"], tags["diagnosis_advice"])
        assert metrics["teacher_dev_f1"] == pytest.approx(teacher.data.metrics["dev_f1"])
        assert metrics["teacher_params"] == teacher.data.metrics["teacher_params"]
        assert metrics["compression"] == pytest.approx(metrics["teacher_params"] / metrics["student_params"])
        assert metrics["compression"] > 1.0
        expected_retention = trial.value / metrics["teacher_dev_f1"] if metrics["teacher_dev_f1"] > 0 else 0.0
        assert metrics["retention"] == pytest.approx(expected_retention)
        assert 0.0 <= metrics["test_f1"] <= 1.0 and 0.0 <= metrics["train_sample_f1"] <= 1.0
        assert metrics["tokens_per_second"] > 0 and metrics["wall_seconds"] > 0
        assert metrics["speedup"] == pytest.approx(metrics["student_sentences_per_s"] / metrics["teacher_sentences_per_s"])
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert ARTIFACTS <= artifacts
    # The sweep found something: at least one student learned beyond nothing.
    assert best.value > 0


# --------------------------------------------------------------------------- 5. resume
def test_run_study_again_adds_nothing_and_continues_to_a_raised_n_trials(store):
    spec = _spec({"study.n_trials": 2})
    assert _run(_ctx(spec, store))[0] == 0
    study = _load(store)
    first = [(t.number, t.params, t.value) for t in study.get_trials()]
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    run_ids = {run.info.run_id for run in _runs(store, study)}
    assert len(run_ids) == 4  # parent, teacher, 2 trials

    code, output = _run(_ctx(spec, store))
    assert code == 0 and "nothing to do" in output
    study = _load(store)
    assert len(study.trials) == 2
    assert {run.info.run_id for run in _runs(store, study)} == run_ids

    code, output = _run(_ctx(spec, store, n_trials=3))
    assert code == 0, output
    study = _load(store)
    assert _states(study) == ["COMPLETE"] * 3
    assert [(t.number, t.params, t.value) for t in study.get_trials()[:2]] == first
    assert study.user_attrs["n_trials"] == 3
    runs = _runs(store, study)
    new = [run for run in runs if run.info.run_id not in run_ids]
    assert [run.data.tags["role"] for run in new] == ["trial"]
    assert new[0].data.tags["trial_number"] == "2"
    assert [run.data.tags["role"] for run in runs].count("study") == 1
    assert [run.data.tags["role"] for run in runs].count("teacher") == 1
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_create_or_load_refuses_a_changed_spec_under_the_same_name(store):
    assert _run(_ctx(_spec({"study.n_trials": 1}), store))[0] == 0
    changed = _spec({"study.n_trials": 1, "training.epochs": 3})
    with pytest.raises(SpecError, match="already exists .* with a different spec"):
        _run(_ctx(changed, store))


def test_spec_digest_ignores_defaults_written_out_but_not_real_changes():
    base = driver.spec_digest(_spec())
    # A default written out (or a setting a later version adds with its default) is the same study.
    assert driver.spec_digest(_spec({"training.fused_optimizer": True, "training.weight_decay": 0.01})) == base
    assert driver.spec_digest(_spec({"study.n_trials": 9, "description": "other words"})) == base
    assert driver.spec_digest(_spec({"training.fused_optimizer": False})) != base
    assert driver.spec_digest(_spec({"training.epochs": 3})) != base


# --------------------------------------------------------------------------- 6. NaN -> FAIL
def test_run_study_fails_a_nan_trial_and_completes_the_others(store):
    spec = _spec({"study.search_space": {"training.learning_rate": {"type": "categorical",
                                                                    "choices": [1.0e-2, 1.0e30]}}})
    ctx = _ctx(spec, store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    for learning_rate in (1.0e30, 1.0e-2, 1.0e-2, 1.0e-2):  # trial 0 diverges, the others do not
        study.enqueue_trial({"training.learning_rate": learning_rate})
    code, output = _run(ctx)
    assert code == 0, output
    study = _load(store)
    trials = study.get_trials()
    assert _states(study) == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {t.params["training.learning_rate"] for t in failed} == {1.0e30}
    assert {t.params["training.learning_rate"] for t in complete} == {1.0e-2}
    client = _client(store)
    for trial in failed:
        assert trial.user_attrs["fail_reason"].startswith("TrialError: loss became")
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["optuna_state"] == "FAIL"
        assert "loss became" in run.data.tags["error"]
    for trial in complete:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_failed"] == len(failed)
    assert _runs(store, study, "attributes.status = 'RUNNING'") == []


# --------------------------------------------------------------------------- 7. interrupt -> KILLED
def test_an_interrupt_while_a_trial_is_asked_for_leaves_it_failed_and_owned(store, monkeypatch):
    """Ctrl-C that lands inside `study.ask()` (before the trial could run) must not leave it RUNNING."""
    ctx = _ctx(_spec(), store)
    storage = driver.open_storage(ctx.storage_url)
    study = driver.create_or_load(ctx, storage)
    driver.ensure_tracking(ctx, study, Tracker(ctx.tracking_uri))
    real_ask = optuna.Study.ask

    def ask_then_signal(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # arrives between the trial's creation and its first attribute
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            driver.work(ctx)
    finally:
        reset_interrupts()
    monkeypatch.setattr(optuna.Study, "ask", real_ask)
    (trial,) = _load(store).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert trial.user_attrs["worker"].endswith(f":{os.getpid()}")
    assert "mlflow_run_id" not in trial.user_attrs  # nothing was tracked for it


def test_work_interrupted_trial_is_killed_in_mlflow_failed_in_optuna_and_resumable(store, monkeypatch):
    ctx = _ctx(_spec(), store)
    storage = driver.open_storage(ctx.storage_url)
    study = driver.create_or_load(ctx, storage)
    tracker = Tracker(ctx.tracking_uri)
    driver.ensure_tracking(ctx, study, tracker)
    real = pipeline.run_distillation
    calls = []

    def interrupted_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("Ctrl-C")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "run_distillation", interrupted_second_run)
    with pytest.raises(KeyboardInterrupt):
        driver.work(ctx)
    monkeypatch.setattr(objective, "run_distillation", real)

    study = _load(store)
    assert _states(study) == ["COMPLETE", "FAIL"]
    killed = study.trials[1]
    assert killed.user_attrs["fail_reason"] == "interrupted"
    run = tracker.client.get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna_state"] == "FAIL"

    assert driver.reconcile(study, ctx, tracker) == 0  # the trial was already told FAIL
    driver.work(ctx)
    study = _load(store)
    assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert driver.finished_count(study) == ctx.n_trials == 3
    statuses = [tracker.client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in study.trials]
    assert statuses == ["FINISHED", "KILLED", "FINISHED", "FINISHED"]
    # Where each trial was, as `study status` shows it while it runs: the last seed's last step.
    last = study.trials[-1].user_attrs["progress"]
    assert last["stage"] == "distill" and last["step"] == last["total"] > 0
    assert last["seed"] == last["seeds"] == len(ctx.seeds)


def test_a_trial_records_each_seeds_score_as_the_seed_finishes(store, monkeypatch):
    """`study status` shows a running trial's finished seeds: the score is in the trial as soon as the
    seed ends, so a trial that fails on its second seed still holds its first seed's."""
    ctx = _ctx(_spec({"study.n_trials": 1, "study.seeds": [3, 4]}), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    driver.ensure_tracking(ctx, study, Tracker(ctx.tracking_uri))
    real = pipeline.run_distillation
    seen = []

    def second_seed_fails(config, **kwargs):
        if config.training.seed == 4:
            seen.append(dict(_load(store).trials[-1].user_attrs.get("dev_f1_per_seed", {})))  # the running one
            raise RuntimeError("disk full")
        return real(config, **kwargs)

    monkeypatch.setattr(objective, "run_distillation", second_seed_fails)
    driver.work(ctx)  # the worker retries the failing setting until it gives up (4 failures)
    trials = _load(store).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * len(seen) and len(seen) >= 1
    for trial, before in zip(trials, seen):
        assert list(before) == ["3"] and 0 < before["3"] <= 1  # stored before the second seed started
        assert trial.user_attrs["dev_f1_per_seed"] == before


def test_a_second_signal_does_not_cut_a_worker_stopping_on_the_first(store, monkeypatch):
    """Ctrl-C reaches a worker, then its coordinator forwards SIGTERM while the worker fails its
    trial: the second signal must not leave that trial RUNNING (CI saw it as 'worker ... died')."""
    ctx = _ctx(_spec(), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    driver.ensure_tracking(ctx, study, Tracker(ctx.tracking_uri))
    real_set = optuna.Trial.set_user_attr

    def ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
        raise AssertionError("SIGINT did not interrupt the run")

    def forwarded_sigterm(self, key, value):
        real_set(self, key, value)
        if key == "fail_reason":  # the worker is recording its first interrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here; before the fix it raised out of run_one

    monkeypatch.setattr(objective, "run_distillation", ctrl_c)
    monkeypatch.setattr(optuna.Trial, "set_user_attr", forwarded_sigterm)
    worker_interrupts()  # the autouse fixture puts the test process's handlers back
    with pytest.raises(KeyboardInterrupt):
        driver.work(ctx)
    assert signals._RECEIVED == [signal.SIGINT, signal.SIGTERM]
    (trial,) = _load(store).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert Tracker(ctx.tracking_uri).client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_tracker_run_interrupted_while_closing_ends_killed_then_reraises(store):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    tracker = Tracker(store.uri)
    experiment_id = tracker.ensure_experiment("closing")
    with pytest.raises(KeyboardInterrupt):
        with tracker.run(experiment_id, "closing") as handle:
            run_id = handle.run_id
            # SIGTERM while queued metrics are being flushed: the run is still closed, KILLED.
            handle.flush = lambda: signal.raise_signal(signal.SIGINT)
    assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is before  # handlers are restored


def test_tracker_run_ends_its_run_when_the_store_is_busy_for_a_moment(store, monkeypatch):
    tracker = Tracker(store.uri)
    experiment_id = tracker.ensure_experiment("busy")
    real, calls = tracker.end_run, []

    def locked_once(run_id: str, status: str, **options: bool) -> None:
        calls.append(status)
        if len(calls) == 1:  # what an SQLite store says while other workers hold its lock
            raise RuntimeError("database is locked")
        real(run_id, status, **options)

    monkeypatch.setattr(tracker, "end_run", locked_once)
    with pytest.raises(KeyboardInterrupt):
        with tracker.run(experiment_id, "busy") as handle:
            run_id = handle.run_id
            raise KeyboardInterrupt("SIGTERM")
    assert calls == ["KILLED", "KILLED"]
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_work_interrupt_after_the_run_finished_keeps_the_trial_complete(store, monkeypatch):
    ctx = _ctx(_spec({"study.n_trials": 2}), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    tracker = Tracker(ctx.tracking_uri)
    driver.ensure_tracking(ctx, study, tracker)

    class InterruptedOnExit:  # the interrupt lands between the run's end and the trial's tell
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(optuna_compat, "heartbeat", InterruptedOnExit)
    with pytest.raises(KeyboardInterrupt):
        driver.work(ctx)
    study = _load(store)
    assert _states(study) == ["COMPLETE"]  # not FAIL beside a FINISHED run, and not re-run
    run = tracker.client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optuna_state"] == "COMPLETE"


def test_end_orphan_runs_ends_only_runs_whose_trial_failed(store):
    ctx = _ctx(_spec(), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    tracker = Tracker(ctx.tracking_uri)
    experiment_id, parent = driver.ensure_tracking(ctx, study, tracker)
    dead, live, done, stopped = study.ask(), study.ask(), study.ask(), study.ask()
    study.tell(dead, state=TrialState.FAIL)
    # `stopped`: its worker was interrupted, failed the trial, and could not end the run.
    stopped.set_user_attr("fail_reason", "interrupted")
    study.tell(stopped, state=TrialState.FAIL)
    # `done`: its owner's run was read RUNNING by the sweep, then ended and its trial told COMPLETE
    # before the sweep looked at the trials -- a race that once ended a finished run FAILED.
    study.tell(done, 0.5)

    def trial_run(trial) -> str:
        return tracker.create_run(experiment_id, f"t{trial.number}", parent_run_id=parent, tags={
            "role": "trial", "study": "unit_study", "optuna_trial_id": optuna_compat.trial_id(trial)})

    orphan, fresh, closing = trial_run(dead), trial_run(live), trial_run(done)  # none recorded its run id yet
    interrupted = trial_run(stopped)
    assert driver.end_orphan_runs(study, tracker, experiment_id) == 2
    assert tracker.client.get_run(orphan).info.status == "FAILED"
    assert tracker.client.get_run(interrupted).info.status == "KILLED"  # stopped, not broken
    assert tracker.client.get_run(interrupted).data.tags["error"] == "interrupted before the run ended"
    assert tracker.client.get_run(fresh).info.status == "RUNNING"
    assert tracker.client.get_run(closing).info.status == "RUNNING"  # left to its owner
    assert tracker.client.get_run(parent).info.status == "RUNNING"  # only trial runs are swept


def test_artifacts_are_written_after_the_tell_and_present_once_the_run_is_finished(store, monkeypatch):
    ctx = _ctx(_spec({"study.n_trials": 2}), store)
    seen: list[tuple[str, str, int]] = []  # (trial state in storage, run status, number of artifacts then)
    log_artifacts = objective._log_artifacts

    def observed(run, result, config, ctx_):
        study = _load(store)
        trial = next(t for t in study.trials if t.user_attrs.get("mlflow_run_id") == run.run_id)
        seen.append((trial.state.name, _client(store).get_run(run.run_id).info.status,
                     len(_client(store).list_artifacts(run.run_id))))
        log_artifacts(run, result, config, ctx_)

    monkeypatch.setattr(objective, "_log_artifacts", observed)
    code, _ = _run(ctx)
    assert code == 0
    # Optuna had the result before any artifact was drawn, and the run was still open for them.
    assert seen == [("COMPLETE", "RUNNING", 0), ("COMPLETE", "RUNNING", 0)]
    study = _load(store)
    for trial in study.trials:
        run = _client(store).get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["optuna_state"] == "COMPLETE"
        assert {item.path for item in _client(store).list_artifacts(run.info.run_id)} == ARTIFACTS


def test_an_artifact_that_cannot_be_written_is_tagged_and_the_trial_stands(store, monkeypatch):
    def broken(run, *args):
        raise OSError("artifact store refused the upload")

    monkeypatch.setattr(objective, "_log_artifacts", broken)
    code, _ = _run(_ctx(_spec({"study.n_trials": 1}), store))
    assert code == 0
    study = _load(store)
    assert _states(study) == ["COMPLETE"]
    run = _client(store).get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "artifact store refused the upload" in run.data.tags["artifact_error"]


def test_a_completed_trial_whose_worker_died_before_its_artifacts_gets_its_run_finished(store):
    ctx = _ctx(_spec(), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    tracker = Tracker(ctx.tracking_uri)
    experiment_id, parent = driver.ensure_tracking(ctx, study, tracker)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a local pid that no longer runs
    dead_owner, live_owner = study.ask(), study.ask()
    dead_owner.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    live_owner.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # still writing its artifacts
    for trial in (dead_owner, live_owner):
        study.tell(trial, 0.5)
    runs = [tracker.create_run(experiment_id, f"t{t.number}", parent_run_id=parent, tags={
        "role": "trial", "study": "unit_study", "optuna_trial_id": optuna_compat.trial_id(t)})
        for t in (dead_owner, live_owner)]
    assert driver.end_orphan_runs(study, tracker, experiment_id) == 1
    ended, open_run = (tracker.client.get_run(run_id) for run_id in runs)
    assert ended.info.status == "FINISHED"  # the result stands; only the artifacts are lost
    assert ended.data.tags["artifact_error"] == "lost: the worker died before writing them"
    assert open_run.info.status == "RUNNING"  # left to its live worker


def test_the_background_writer_runs_jobs_in_order_and_drain_waits_for_all():
    from distill_lab.study.background import BackgroundWriter

    done: list[int] = []
    writer = BackgroundWriter()

    def job(number: int) -> Callable[[], None]:
        def run() -> None:
            time.sleep(0.05)
            if number == 1:
                raise RuntimeError("a broken job")  # logged; the next one still runs
            done.append(number)
        return run

    for number in range(4):
        writer.submit(job(number))
    writer.drain()
    assert done == [0, 2, 3] and writer.pending == 0
    writer.submit(job(5))  # a drained writer takes new work
    writer.drain()
    assert done == [0, 2, 3, 5]


def test_run_study_ends_the_parent_run_failed_when_the_coordinator_fails(store, monkeypatch):
    from distill_lab.errors import TrialError

    def broken_teacher(*args, **kwargs):
        raise TrialError("teacher fine-tune: loss became nan at step 3")

    monkeypatch.setattr(driver, "prepare_shared_teacher", broken_teacher)
    with pytest.raises(TrialError):
        _run(_ctx(_spec(), store))
    study = _load(store)
    parent = _client(store).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED"
    assert study.trials == []


def test_a_study_whose_every_trial_fails_is_an_error_with_a_failed_parent_run(store, monkeypatch):
    from distill_lab.errors import TrialError

    def failing_trial(*args, **kwargs):
        raise TrialError("loss became nan at step 2")

    monkeypatch.setattr(workers, "run_trial", failing_trial)
    with pytest.raises(TrialError, match=r"stopped with 0 of 2 trials finished: [4-9] failed \(last: TrialError: "
                                         r"loss became nan at step 2\)"):
        _run(_ctx(_spec(), store, n_trials=2))
    study = _load(store)
    assert {t.state.name for t in study.trials} == {"FAIL"}
    parent = _client(store).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED"


def test_study_run_whose_every_trial_diverges_exits_2_in_one_line(store):
    spec_path = _write_spec(store.dir, {"name": "all_diverge", "training.learning_rate": 1.0e30})
    result = _cli(["study", "run", str(spec_path), "--storage", store.journal, "--tracking-uri", store.uri,
                   "--n-trials", "1"], cwd=store.dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: study 'all_diverge' stopped with 0 of 1 trials finished: 4 failed (last: "), result.stderr
    study = _load(store, "all_diverge")
    assert _states(study) == ["FAIL"] * 4
    assert _client(store).get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FAILED"


def test_non_finite_numbers_in_a_spec_are_refused():
    from distill_lab.errors import SpecError

    for key, value in (("distill.temperature", float("inf")), ("training.learning_rate", float("nan"))):
        with pytest.raises(SpecError, match="finite number"):
            _spec({key: value})


# --------------------------------------------------------------------------- 8. grid with 2 workers
def test_study_run_grid_with_two_workers_runs_every_point_exactly_once(store):
    spec_path = _write_spec(store.dir, {
        "name": "grid_study",
        "study.sampler": "grid", "study.seeds": [1, 2],
        "study.search_space": {"distill.temperature": {"type": "grid", "values": [1, 2, 4, 8]}}})
    result = _cli(["study", "run", str(spec_path), "--storage", store.journal, "--tracking-uri", store.uri,
                   "--workers", "2"], cwd=store.dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output and "Traceback" not in output
    study = _load(store, "grid_study")
    # A worker that asks just after the other took the last queued point records a surplus FAIL and
    # runs nothing; every point runs exactly once.
    trials = [t for t in study.get_trials() if not t.user_attrs.get("fail_reason", "").startswith("surplus")]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.params["distill.temperature"] for t in trials) == [1, 2, 4, 8]
    client = _client(store)
    for trial in trials:
        per_seed = trial.user_attrs["dev_f1_per_seed"]
        assert sorted(per_seed) == ["1", "2"]
        assert trial.value == pytest.approx((per_seed["1"] + per_seed["2"]) / 2)
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["seeds"] == "1,2"
        assert run.data.metrics["dev_f1_seed1"] == pytest.approx(per_seed["1"])
        assert run.data.metrics["dev_f1_seed2"] == pytest.approx(per_seed["2"])
        assert len(client.get_metric_history(run.info.run_id, "seed2_dev_f1")) == 4
    runs = _runs(store, study)
    assert sorted(run.data.tags["role"] for run in runs) == ["study", "teacher"] + ["trial"] * 4
    assert {run.info.status for run in runs} == {"FINISHED"}


# --------------------------------------------------------------------------- 9. bad specs write nothing
BAD_SPACES = {
    "unknown dotted path": ({"distill.temprature": {"type": "float", "low": 1, "high": 4}}, "distill.temprature"),
    "low above high": ({"distill.temperature": {"type": "float", "low": 8, "high": 2}}, "distill.temperature"),
    "empty categorical": ({"distill.alpha_soft": {"type": "categorical", "choices": []}}, "distill.alpha_soft"),
    "grid with a non-list": ({"distill.temperature": {"type": "grid", "values": 4}}, "distill.temperature"),
    "high out of range": ({"training.warmup_ratio": {"type": "float", "low": 0.1, "high": 1.5}},
                          "training.warmup_ratio"),
    "bad later choice": ({"distill.temperature": {"type": "categorical", "choices": [2, -1]}},
                         "distill.temperature"),
}


def _bad_spec_dir(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    directory = tmp_path / case.replace(" ", "_")
    directory.mkdir()
    raw = _raw({"study.search_space": BAD_SPACES[case][0]})
    if case == "grid with a non-list":
        raw["study"]["sampler"] = "grid"
    spec_path = _write_spec(directory, raw=raw)
    return directory, ["study", "run", str(spec_path), "--storage", str(directory / "optuna.journal"),
                       "--tracking-uri", f"sqlite:///{directory}/mlflow.db"]


def _assert_one_error_line(case: str, code: int, stdout: str, stderr: str, directory: Path) -> None:
    assert code == 2, (case, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (case, stderr)
    assert lines[0].startswith("error: ") and BAD_SPACES[case][1] in lines[0], (case, lines[0])
    assert "Traceback" not in stdout + stderr
    assert sorted(os.listdir(directory)) == ["spec.yaml"], case  # no journal, no mlflow.db, no mlruns


def test_study_run_with_a_bad_search_space_exits_2_with_one_line_and_writes_nothing(tmp_path, capfd, monkeypatch):
    from distill_lab import cli

    for case in BAD_SPACES:
        directory, args = _bad_spec_dir(tmp_path, case)
        monkeypatch.chdir(directory)
        monkeypatch.setattr(sys, "argv", ["distill-lab", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capfd.readouterr()
        _assert_one_error_line(case, exit_info.value.code, captured.out, captured.err, directory)


def test_study_run_with_a_bad_search_space_in_a_fresh_process_prints_only_the_error(tmp_path):
    # A fresh interpreter also shows import-time warnings and logging set-up: still one line.
    directory, args = _bad_spec_dir(tmp_path, "unknown dotted path")
    result = _cli(args, cwd=directory)
    _assert_one_error_line("unknown dotted path", result.returncode, result.stdout, result.stderr, directory)


# --------------------------------------------------------------------------- 10. trial rerun
def test_trial_rerun_reproduces_each_seeds_dev_f1_to_4_decimals(store, capsys):
    from distill_lab import cli

    ctx = _ctx(_spec({"study.n_trials": 2, "study.seeds": [3, 4]}), store)
    assert _run(ctx)[0] == 0
    study = _load(store)
    recorded = study.trials[1].user_attrs["dev_f1_per_seed"]
    assert sorted(recorded) == ["3", "4"]
    capsys.readouterr()
    # The CLI's own command, in-process: app() returns the command's exit code.
    code = cli.app(["trial", "rerun", "unit_study", "1", "--storage", store.journal, "--tracking-uri", store.uri,
                    "--json"], standalone_mode=False)
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trial"] == 1
    assert report["params"]["distill.temperature"] == study.trials[1].params["distill.temperature"]
    assert [row["seed"] for row in report["seeds"]] == [3, 4]
    for row in report["seeds"]:
        assert row["match_4dp"] is True
        assert row["recorded_dev_f1"] == recorded[str(row["seed"])]
        assert round(row["rerun_dev_f1"], 4) == round(row["recorded_dev_f1"], 4)
    assert any(row["rerun_dev_f1"] > 0 for row in report["seeds"])


def test_a_grid_trial_not_taken_from_the_queue_is_surplus_and_runs_nothing(store):
    grid = {"distill.temperature": {"type": "grid", "values": [1, 2]}}
    ctx = _ctx(_spec({"study.sampler": "grid", "study.search_space": grid}), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    assert driver.enqueue_missing_grid_points(study, ctx.spec) == 2  # as `study run` does before workers start
    queued = [study.ask(), study.ask()]  # two workers take the two queued points
    assert [workers.is_surplus(study, t, ctx.n_trials, grid=True) for t in queued] == [False, False]
    late = study.ask()  # a third asked after the queue was empty: the grid sampler would rerun a point
    assert workers.is_surplus(study, late, ctx.n_trials, grid=True) is True
    # After a dead worker's point is re-queued (its trial failed first), the trial that takes it is not surplus.
    study.tell(queued[1], state=TrialState.FAIL)
    study.enqueue_trial({"distill.temperature": 2})
    assert workers.is_surplus(study, study.ask(), ctx.n_trials, grid=True) is False


def test_a_grid_point_enqueued_twice_runs_once(store):
    # Two `study run`s started together each enqueue the whole grid before either takes a point.
    grid = {"distill.temperature": {"type": "grid", "values": [1, 4]}}
    ctx = _ctx(_spec({"study.sampler": "grid", "study.search_space": grid}), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    for _ in range(2):
        for point in search_space.grid_points(ctx.spec):
            study.enqueue_trial(point, skip_if_exists=False)
    first = study.ask()
    assert workers.is_surplus(study, first, ctx.n_trials, grid=True) is False
    # The second worker takes the other point; the first, done with T=1, takes the queued copy of T=1.
    assert workers.is_surplus(study, study.ask(), ctx.n_trials, grid=True) is False
    study.tell(first, 0.5)
    again = study.ask()
    assert again.params == {} and workers.is_surplus(study, again, ctx.n_trials, grid=True) is True
    # A copy of a point whose trial is still running is surplus as well.
    assert workers.is_surplus(study, study.ask(), ctx.n_trials, grid=True) is True


def test_study_best_prints_the_winning_mapping_as_a_set_override_for_another_spec(store, capsys):
    from distill_lab import cli
    from distill_lab.spec import resolve

    search = {"distill.layer_mapping": {"type": "monotone_mapping", "pin_ends": False}}
    ctx = _ctx(_spec({"study.n_trials": 3, "distill.alpha_hidden": 1.0, "study.search_space": search}), store)
    assert _run(ctx)[0] == 0
    study = _load(store)
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    capsys.readouterr()
    assert cli.app(["study", "best", "unit_study", "--storage", store.journal], standalone_mode=False) in (0, None)
    shown = json.loads(capsys.readouterr().out)
    assert (shown["trial"], shown["value"]) == (best.number, best.value)
    assert shown["mlflow_run_id"] == best.user_attrs["mlflow_run_id"]
    assert cli.app(["study", "best", "unit_study", "--storage", store.journal, "--as-set"],
                   standalone_mode=False) in (0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill.layer_mapping=")
    # The override gives another spec exactly the mapping the best trial trained with.
    rerun = parse_spec(_raw({"name": "rerun_best", "distill.alpha_hidden": 1.0}), overrides=lines, source="test")
    mapping = resolve(rerun).distill.layer_mapping
    recorded = driver.rerun_params(best, ctx)["distill.layer_mapping"]
    assert mapping.strategy == "explicit" and [list(p) for p in mapping.pairs] == [list(p) for p in recorded["pairs"]]


def test_study_best_without_a_complete_trial_is_one_clear_error(store, capsys):
    from distill_lab.study_runner import best_params

    ctx = _ctx(_spec(), store)
    driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    with pytest.raises(DistillLabError, match="no COMPLETE trial yet"):
        best_params("unit_study", store.journal)


# --------------------------------------------------------------------------- 11. kill -9 and resume
def _wait_for_running_after_complete(process: subprocess.Popen, store: SimpleNamespace, deadline: float) -> int:
    """Poll the journal until a trial is COMPLETE and another RUNNING with its MLflow run; its number."""
    while time.monotonic() < deadline:
        assert process.poll() is None, "study run ended before it could be killed"
        if Path(store.journal).exists():
            try:
                study = optuna.load_study(study_name="unit_study", storage=driver.open_storage(store.journal))
            except KeyError:  # not created yet
                study = None
            if study is not None:
                trials = study.get_trials(deepcopy=False)
                running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
                if running and any(t.state == TrialState.COMPLETE for t in trials):
                    return running[0].number
        time.sleep(0.05)
    raise AssertionError("no COMPLETE + RUNNING moment seen in time")


def test_study_run_killed_with_sigkill_resumes_to_n_trials_with_no_run_left_running(store):
    # Longer trials (16 steps) so the kill lands inside one.
    spec_path = _write_spec(store.dir, {"study.n_trials": 6, "training.epochs": 4})
    command = ["study", "run", str(spec_path), "--storage", store.journal, "--tracking-uri", store.uri]
    with open(store.dir / "first.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "distill_lab.cli", *command], cwd=store.dir,
                                   env=_cli_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            number = _wait_for_running_after_complete(process, store, time.monotonic() + 120)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    study = _load(store)
    killed = study.trials[number]
    assert killed.state == TrialState.RUNNING  # nobody told Optuna
    client = _client(store)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    result = _cli(command, cwd=store.dir)  # the same command again
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed: 1 trial(s) of dead workers marked FAIL" in result.stderr
    study = _load(store)
    states = _states(study)
    assert states.count("COMPLETE") == 6 and states.count("FAIL") == 1 and len(states) == 7
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["fail_reason"] == f"worker {killed.user_attrs['worker']} died"
    assert killed.user_attrs["worker"].endswith(f":{process.pid}")
    run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna_state"] == "FAIL"
    assert _runs(store, study, "attributes.status = 'RUNNING'") == []
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
    assert sum(run.data.tags.get("role") == "study" for run in _runs(store, study)) == 1


# --------------------------------------------------------------------------- 12. local workers and signals
GRID_WORKERS = {"name": "grid_workers", "study.sampler": "grid", "training.epochs": 6,
                "study.search_space": {"distill.temperature": {"type": "grid", "values": [1, 2, 4, 8]}}}


def _start_two_workers(store: SimpleNamespace, log_name: str,
                       session: bool = False) -> tuple[subprocess.Popen, list[str], Any]:
    spec_path = _write_spec(store.dir, GRID_WORKERS)
    command = ["study", "run", str(spec_path), "--storage", store.journal, "--tracking-uri", store.uri,
               "--workers", "2"]
    log = open(store.dir / log_name, "w")
    # As from a terminal: SIGINT at its default even where this test runs with it ignored (nohup, `&`).
    process = subprocess.Popen([sys.executable, "-m", "distill_lab.cli", *command], cwd=store.dir,
                               env=_cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=session,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process, command, log


def _wait_for_a_running_trial(process: subprocess.Popen, store: SimpleNamespace, deadline: float) -> Any:
    while time.monotonic() < deadline:
        assert process.poll() is None, (store.dir / "first.log").read_text()
        if Path(store.journal).exists():
            try:
                study = optuna.load_study(study_name="grid_workers", storage=driver.open_storage(store.journal))
            except KeyError:
                study = None
            running = [t for t in (study.get_trials(deepcopy=False) if study else ())
                       if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running:
                return running[0]
        time.sleep(0.05)
    raise AssertionError("no RUNNING trial seen in time")


def _interrupt(store: SimpleNamespace, session: bool, send: Callable[[subprocess.Popen, Any], None]) -> tuple[
        subprocess.Popen, list[str], Any, str]:
    """Start `study run --workers 2`, `send` a signal once a trial runs, wait for the end: (process,
    command, the trial that was running, everything it printed)."""
    process, command, log = _start_two_workers(store, "first.log", session=session)
    try:
        victim = _wait_for_a_running_trial(process, store, time.monotonic() + 240)
        send(process, victim)
        process.wait(timeout=CLI_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    return process, command, victim, (store.dir / "first.log").read_text()


def _pid_alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie is gone too
    except FileNotFoundError:
        return False


def _worker_children(pid: int) -> list[int]:
    """The multiprocessing (spawn) worker processes whose parent is `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and "spawn_main" in cmdline:
            children.append(int(entry.name))
    return children


@pytest.mark.parametrize("how", ["SIGTERM to the coordinator", "Ctrl-C to the process group"])
def test_an_interrupt_stops_every_worker_and_leaves_nothing_running(store, how):
    children: list[int] = []

    def send(process: subprocess.Popen, running: Any) -> None:
        children.extend(_worker_children(process.pid))
        if how.startswith("SIGTERM"):
            os.kill(process.pid, signal.SIGTERM)  # what docker stop, systemd and Kubernetes send
        else:  # a terminal's Ctrl-C reaches the coordinator and both workers at once
            os.killpg(process.pid, signal.SIGINT)

    process, command, _, output = _interrupt(store, True, send)
    assert process.returncode == 130, output
    assert "running trials were marked FAIL and their runs ended KILLED" in output
    study = _load(store, "grid_workers")
    trials = study.get_trials(deepcopy=False)
    assert TrialState.RUNNING not in {t.state for t in trials}, output
    interrupted = [t for t in trials if t.state == TrialState.FAIL and "mlflow_run_id" in t.user_attrs]
    reasons = [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL]
    assert interrupted and {t.user_attrs["fail_reason"] for t in interrupted} <= {"interrupted"}, (reasons, output)
    client = _client(store)
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in interrupted} == {"KILLED"}
    assert _runs(store, study, "attributes.status = 'RUNNING'") == []
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    workers = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials if "worker" in t.user_attrs}
    assert len(children) == 2 and workers <= set(children)
    assert not any(_pid_alive(pid) for pid in children)  # none carries on after its coordinator
    completed_before = sum(t.state == TrialState.COMPLETE for t in trials)
    assert completed_before < 4  # the workers stopped instead of finishing every point

    result = _cli(command, cwd=store.dir)  # the same command resumes to every point, once each
    assert result.returncode == 0, result.stdout + result.stderr
    study = _load(store, "grid_workers")
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert sorted(t.params["distill.temperature"] for t in done) == [1, 2, 4, 8]


def test_a_killed_worker_s_point_is_rerun_and_the_study_still_finishes_every_point(store):
    def send(process: subprocess.Popen, running: Any) -> None:
        pid = int(running.user_attrs["worker"].rpartition(":")[2])
        assert pid != process.pid
        os.kill(pid, signal.SIGKILL)

    process, _, victim, output = _interrupt(store, False, send)
    assert process.returncode == 0, output
    assert "1 worker process(es) died" in output
    study = _load(store, "grid_workers")
    trials = study.get_trials(deepcopy=False)
    killed = [t for t in trials if t.number == victim.number][0]
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == f"worker {killed.user_attrs['worker']} died"
    client = _client(store)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["distill.temperature"] for t in done) == [1, 2, 4, 8]  # each point once
    assert _runs(store, study, "attributes.status = 'RUNNING'") == []
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


def test_two_starts_at_once_share_one_parent_run(store):
    ctx = _ctx(_spec(), store)
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    tracker = Tracker(ctx.tracking_uri)
    experiment_id = tracker.ensure_experiment("unit_study")
    # The other `study run` created its parent a moment ago and has not yet stored its id.
    rival = tracker.create_run(experiment_id, "study unit_study", tags={
        "role": "study", "study": "unit_study", "optuna_storage": ctx.storage_url})
    assert driver.ensure_tracking(ctx, study, tracker) == (experiment_id, rival)
    assert _load(store).user_attrs["mlflow_parent_run_id"] == rival
    parents = _client(store).search_runs([experiment_id], filter_string="tags.role = 'study'")
    assert [run.info.run_id for run in parents] == [rival]  # the loser deleted its own
    # The rival, looking after both exist, keeps its own: the earliest, the same for both.
    again = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    assert driver.ensure_tracking(ctx, again, tracker)[1] == rival


def test_two_study_runs_started_together_make_one_parent_run(store):
    spec_path = _write_spec(store.dir, {"name": "twin_starts", "study.sampler": "grid",
                                        "study.search_space": {"distill.temperature": {"type": "grid",
                                                                                       "values": [1, 4]}}})
    command = [sys.executable, "-m", "distill_lab.cli", "study", "run", str(spec_path), "--storage", store.journal,
               "--tracking-uri", store.uri]
    processes = [subprocess.Popen(command, cwd=store.dir, env=_cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=CLI_TIMEOUT)[0] for process in processes]
    for number, output in enumerate(outputs):
        print(f"--- study run {number}:\n{output}")  # shown whole under a failure (the message is cut)
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = _load(store, "twin_starts")
    runs = _runs(store, study)
    parents = [run for run in runs if run.data.tags["role"] == "study"]
    assert [run.info.run_id for run in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    trials = [run for run in runs if run.data.tags["role"] == "trial"]
    assert {run.data.tags[PARENT_TAG] for run in trials} == {parents[0].info.run_id}
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert sorted(t.params["distill.temperature"] for t in done) == [1, 4]


def test_a_secret_from_the_environment_is_stored_and_printed_nowhere(store, monkeypatch, capfd):
    secret = "planted-Secret-4e1f9b"
    monkeypatch.setenv("DL_TEST_TOKEN", secret)
    spec = parse_spec(_raw({"description": "shared by ${DL_TEST_TOKEN}", "tracking.experiment": "unit_study"}),
                      overrides=["study.n_trials=1"], source="test")
    assert spec.description == f"shared by {secret}"  # expanded for the run itself
    code, printed = _run(_ctx(spec, store))
    assert code == 0
    captured = capfd.readouterr()
    stores = [path for path in store.dir.rglob("*") if path.is_file()]
    assert Path(store.journal) in stores and store.dir / "mlflow.db" in stores
    for path in stores:  # the Optuna journal, the MLflow database, every artifact
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in printed + captured.out + captured.err
    study = _load(store)
    assert study.user_attrs["spec"]["description"] == "shared by ${DL_TEST_TOKEN}"  # stored as written
    assert driver.spec_of(study).description == f"shared by {secret}"  # expanded when read back
    parent = _client(store).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["mlflow.note.content"] == "shared by ${DL_TEST_TOKEN}"


@pytest.mark.parametrize("case", ["missing data directory", "unreachable tracking server"])
def test_bad_inputs_are_refused_before_any_state_is_written(store, case):
    raw = _raw({"name": "checked_first"})
    tracking = store.uri
    if case == "missing data directory":
        raw["data"] = {"source": "conll", "path": str(store.dir / "no_such_corpus")}
    else:
        tracking = "http://127.0.0.1:9"  # nothing listens on the discard port
    spec_path = _write_spec(store.dir, raw=raw)
    result = _cli(["study", "run", str(spec_path), "--storage", store.journal, "--tracking-uri", tracking],
                  cwd=store.dir)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("does not exist" in lines[0] or "does not answer" in lines[0]), lines
    assert not Path(store.journal).exists()  # no study, no spec digest to trip over
    assert _client(store).get_experiment_by_name("checked_first") is None


def test_a_study_with_no_finished_trial_takes_a_corrected_spec(store):
    grid = {"distill.temperature": {"type": "grid", "values": [1, 2]}}
    first = _ctx(_spec({"study.sampler": "grid", "study.search_space": grid}), store)
    study = driver.create_or_load(first, driver.open_storage(first.storage_url))
    driver.enqueue_missing_grid_points(study, first.spec)
    study.tell(study.ask(), state=TrialState.FAIL)  # e.g. its teacher could not be trained
    corrected = _ctx(_spec({"study.sampler": "grid", "training.epochs": 3,
                            "study.search_space": {"distill.temperature": {"type": "grid", "values": [4, 8]}}}), store)
    study = driver.create_or_load(corrected, driver.open_storage(corrected.storage_url))
    assert study.user_attrs["spec_digest"] == driver.spec_digest(corrected.spec)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.WAITING not in states  # the old spec's queued point will not run
    assert driver.enqueue_missing_grid_points(study, corrected.spec) == 2
    study.tell(study.ask(), 0.5)
    with pytest.raises(SpecError, match="with a different spec"):  # once a trial finished, never again
        driver.create_or_load(first, driver.open_storage(first.storage_url))


def test_validate_checks_the_data_and_says_an_explicit_mapping_is_unused(store, capsys):
    from distill_lab import cli

    raw = _raw({"distill.layer_mapping": {"strategy": "explicit", "pairs": [[0, 0], [3, 1]]}})
    spec_path = _write_spec(store.dir, raw=raw)
    assert cli.app(["validate", str(spec_path)], standalone_mode=False) in (0, None)
    assert "note: distill.layer_mapping (explicit) is unused: alpha_hidden and alpha_attention are 0" in \
        capsys.readouterr().out
    raw["distill"]["layer_mapping"]["pairs"] = [[0, 0], [9, 1]]  # past the 4-layer teacher: refused anyway
    _write_spec(store.dir, raw=raw)
    with pytest.raises(SpecError, match="9"):
        cli.app(["validate", str(spec_path)], standalone_mode=False)
    raw["distill"].pop("layer_mapping")
    raw["data"] = {"source": "conll", "path": str(store.dir / "nowhere")}
    _write_spec(store.dir, raw=raw)
    with pytest.raises(DistillLabError, match="nowhere: data directory does not exist"):
        cli.app(["validate", str(spec_path)], standalone_mode=False)


def test_workers_ignore_sigint_when_their_coordinator_does():
    code = ("import signal; from distill_lab.signals import worker_interrupts; worker_interrupts(); "
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)")
    ignored = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert ignored.stdout.split() == ["True", "False"], ignored.stderr  # SIGTERM is still taken
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert default.stdout.split() == ["False", "False"], default.stderr


def test_an_interrupt_python_swallows_is_still_seen():
    # A KeyboardInterrupt raised inside a finaliser is printed and dropped by Python ("Exception
    # ignored in"): it once let a worker carry on to the end of the study after its Ctrl-C.
    code = textwrap.dedent("""
        import os, signal, gc
        from distill_lab.signals import interrupted, worker_interrupts
        worker_interrupts()
        class Finalised:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10**6):
                    pass
        Finalised(); gc.collect()
        print("carried on", interrupted())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Exception ignored in" in result.stderr and "KeyboardInterrupt" in result.stderr
    assert result.stdout.strip() == "carried on True"


def test_a_trial_interrupted_in_its_second_seed_resumes_its_seeds_where_they_were(store, monkeypatch):
    """Resume points (training.resume_every_minutes): the re-queued trial scores the finished first seed
    without training it and trains the second from its last point; afterwards no point is left."""
    grid = {"distill.temperature": {"type": "grid", "values": [2.0]}}
    ctx = _ctx(_spec({"study.n_trials": 1, "study.seeds": [1, 2], "study.sampler": "grid", "study.search_space": grid,
                      "training.resume_every_minutes": 1e-9}), store)  # a point after every step
    study = driver.create_or_load(ctx, driver.open_storage(ctx.storage_url))
    tracker = Tracker(ctx.tracking_uri)
    driver.ensure_tracking(ctx, study, tracker)
    real, calls = pipeline.run_distillation, []

    def killed_in_seed_two_step_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            inner = kwargs["stage"]

            def stage(name, done, total):
                if name == "distill" and done == 3:
                    raise KeyboardInterrupt("Ctrl-C")
                inner(name, done, total)
            kwargs["stage"] = stage
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "run_distillation", killed_in_seed_two_step_three)
    driver.enqueue_missing_grid_points(study, ctx.spec)
    with pytest.raises(KeyboardInterrupt):
        driver.work(ctx)
    monkeypatch.setattr(objective, "run_distillation", real)
    points = home_dir() / "resume"
    assert len(list(points.glob("run-*.pt"))) == 2  # seed 1 at its end, seed 2 at step 2

    study = _load(store)
    first_seed = study.trials[0].user_attrs["dev_f1_per_seed"]["1"]
    code, printed = _run(ctx)  # `study run` again: the grid point goes back to the queue
    assert code == 0 and "2 seed(s) of stopped trials left resume points on this machine" in printed
    study = _load(store)
    assert _states(study) == ["FAIL", "COMPLETE"]
    done = study.trials[1]
    run = tracker.client.get_run(done.user_attrs["mlflow_run_id"])
    steps = max(m.step for m in tracker.client.get_metric_history(run.info.run_id, "dev_precision"))  # seed 1's
    assert run.data.metrics["resumed_steps"] == steps + 2  # all of seed 1, two steps of seed 2
    assert done.user_attrs["dev_f1_per_seed"]["1"] == first_seed
    assert list(points.glob("run-*.pt")) == []  # discarded once the trial's result was logged
