"""The rich front ends of the run and study commands: one run's summary, the study coordinator with
progress bars, worker, status, best, trial rerun."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from distill_lab import search_space
from distill_lab import study as driver
from distill_lab.distill import resume
from distill_lab.data.loader import check_data
from distill_lab.errors import DistillLabError, SpecError, TrialError
from distill_lab.masking import mask_url
from distill_lab.pipeline import run_distillation
from distill_lab.progress import StudyProgress
from distill_lab.runtime import quiet_libraries
from distill_lab.signals import sigterm_interrupts
from distill_lab.spec import StudySpec, load_spec, resolve
from distill_lab.study.summary import diagnosis_news, samples_mapping, shown_params, state_counts, study_line
from distill_lab.study.workers import supervise
from distill_lab.tracking import RunHandle, Tracker, check_tracking_store, default_tracking_uri


def study_context(spec: StudySpec, *, storage: str | None = None, tracking_uri: str | None = None,
                  n_trials: int | None = None, timeout: float | None = None, save_best: bool = False,
                  register: str | None = None, workers: int = 1) -> driver.StudyContext:
    """A study's context after every input is checked: search space, models, data, tracking store.

    Nothing is written before the inputs are known good. `save_best` is the flag or the spec's
    `tracking.save_best`; `register` implies it.
    """
    search_space.check_space(spec)
    if n_trials is not None and n_trials < 1:
        raise DistillLabError(f"--n-trials must be >= 1 but got {n_trials}")
    if workers < 1:
        raise DistillLabError(f"--workers must be >= 1 but got {workers}")
    quiet_libraries()
    n_teacher, n_student = driver.check_against_models(spec)
    check_data(spec.data)
    tracking = default_tracking_uri(tracking_uri, spec.tracking.tracking_uri)
    check_tracking_store(tracking)
    return driver.StudyContext(
        spec=spec, storage_url=storage or driver.default_storage(), tracking_uri=tracking,
        n_trials=driver.target_trials(spec, n_trials), n_teacher=n_teacher, n_student=n_student,
        save_best=bool(save_best or register or spec.tracking.save_best), timeout=timeout, register=register)


def run_study(ctx: driver.StudyContext, *, workers: int, console: Console, out: Console) -> int:
    """Create/resume the study, prepare the teacher once, run workers, print the summary."""
    storage = driver.open_storage(ctx.storage_url, workers=workers, tracking_uri=ctx.tracking_uri)
    study = driver.create_or_load(ctx, storage)
    if driver.finished_count(study) >= ctx.n_trials:
        out.print(f"study {ctx.spec.name!r} is finished ({ctx.n_trials} trials); nothing to do")
        _print_summary(study, ctx, out)
        if ctx.save_best:
            _publish_best(study, ctx, Tracker(ctx.tracking_uri), console)
        return 0
    tracker = Tracker(ctx.tracking_uri)
    experiment_id, parent_run_id = driver.ensure_tracking(ctx, study, tracker)
    fixed = driver.reconcile(study, ctx, tracker)
    orphans = driver.end_orphan_runs(study, tracker, experiment_id)
    if fixed or orphans:
        console.print(f"resumed: {fixed} trial(s) of dead workers marked FAIL, {orphans} orphan MLflow run(s) ended")
    if points := resume.points_of(ctx.spec.name):
        console.print(f"{len(points)} seed(s) of stopped trials left resume points on this machine: "
                      "their trials continue from them")
    tracker.client.update_run(parent_run_id, status="RUNNING")
    sigterm_interrupts()
    status = "FINISHED"
    started, stopped = time.monotonic(), None
    progress = StudyProgress(console, ctx.spec.name, ctx.n_trials, driver.finished_count(study), study_line(study))
    try:
        with progress:
            stage, refresh = progress.stage, _Refresh(progress, ctx)
            driver.prepare_shared_teacher(ctx, tracker, experiment_id, parent_run_id, stage=stage)
            if workers == 1:
                driver.work(ctx, on_trial=refresh, stage=stage, storage=storage)
            else:
                died = supervise(driver.spawn_workers(ctx, workers), study, ctx, tracker, refresh)
                if died:
                    console.print(f"{died} worker process(es) died; their trials were marked FAIL and re-queued")
                if died and driver.finished_count(study) < ctx.n_trials:
                    # Nothing lost: what the dead workers left (their re-queued points) runs here.
                    console.print("running what the dead workers left in this process")
                    driver.work(ctx, on_trial=refresh, stage=stage, storage=storage)
            refresh(study)
            stopped = _stopped_by_failures(study, ctx, started)
            if stopped:
                status = "FAILED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        console.print("interrupted: running trials were marked FAIL and their runs ended KILLED; "
                      "run the same command to resume")
        return 130
    except BaseException:
        status = "FAILED"  # e.g. the teacher fine-tune failed: the study run did not finish
        raise
    finally:
        tracker.end_run(parent_run_id, status)
        _log_study_metrics(study, tracker, parent_run_id)
    _print_summary(study, ctx, out)
    if stopped:
        raise TrialError(stopped)
    if ctx.save_best:
        _publish_best(study, ctx, tracker, console)
    return 0


class _Refresh:
    """Called after each poll of the workers and each trial: the study's progress, and a line for
    each diagnosis other than ok the first time a finished trial shows it."""

    def __init__(self, progress: StudyProgress, ctx: driver.StudyContext) -> None:
        self._progress, self._ctx, self._finished = progress, ctx, -1
        self._said: set[str] = set()

    def __call__(self, current: optuna.Study) -> None:
        finished = driver.finished_count(current)
        self._progress.study(finished, study_line(current))
        if finished != self._finished:  # a trial ended: has it shown a diagnosis not yet said?
            self._finished = finished
            for line in diagnosis_news(current, self._said, self._ctx):
                self._progress.note(line)


def _publish_best(study: optuna.Study, ctx: driver.StudyContext, tracker: Tracker, console: Console) -> None:
    from distill_lab.student_export import publish_best

    console.print("saving the best student: re-training the best trial's first seed from its record")
    published = publish_best(study, ctx, tracker, register=ctx.register)
    if published is None:
        return
    check = "" if published.reproduced is None else (
        f" (re-trained dev F1 {published.dev_f1:.4f}, recorded {published.recorded_dev_f1:.4f}"
        f"{'' if published.reproduced else ': NOT the same to 4 decimals'})")
    registered = f", registered as {ctx.register!r} version {published.registered_version}" if ctx.register else ""
    console.print(f"best trial #{published.trial}: student logged as MLflow Model {published.model_uri}"
                  f"{check}{registered}", soft_wrap=True)


def _stopped_by_failures(study: optuna.Study, ctx: driver.StudyContext, started: float) -> str | None:
    """Why the study ended short of its trials because trials failed (None: it did not).

    A study whose every trial failed, or that the failure cap stopped, must not exit 0 with a
    FINISHED parent run; a --timeout that ran out is not a failure.
    """
    counts = state_counts(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if finished >= ctx.n_trials or (ctx.timeout and time.monotonic() - started >= ctx.timeout):
        return None
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if not str(t.user_attrs.get("fail_reason", "")).startswith(("surplus", "interrupted"))]
    if not failed:
        return None
    last = str(failed[-1].user_attrs.get("fail_reason", "unknown")).splitlines()[0][:300]
    return (f"study {ctx.spec.name!r} stopped with {finished} of {ctx.n_trials} trials finished: "
            f"{len(failed)} failed (last: {last}); `distill-lab study status` lists them")


def _log_study_metrics(study: optuna.Study, tracker: Tracker, parent_run_id: str) -> None:
    try:
        counts = state_counts(study)
        best = driver.best_trial(study)
        metrics = {"n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
                   "n_failed": counts[TrialState.FAIL]}
        if best is not None:
            metrics.update(best_dev_f1=best.value, best_trial_number=best.number)
        RunHandle(tracker.client, parent_run_id).log_metrics(metrics)
    except Exception:  # noqa: BLE001 - summary metrics must never hide the study's own outcome
        pass


def run_worker(ctx: driver.StudyContext, *, console: Console) -> int:
    """`study worker`: join a study created by `study run`."""
    storage = driver.open_storage(ctx.storage_url, tracking_uri=ctx.tracking_uri)
    try:
        study = optuna.load_study(study_name=ctx.spec.name, storage=storage)
    except KeyError:
        raise SpecError(f"no study {ctx.spec.name!r} in {mask_url(ctx.storage_url)}: create it with `distill-lab study "
                        f"run SPEC --storage {mask_url(ctx.storage_url)}` first") from None
    if study.user_attrs.get("spec_digest") != driver.spec_digest(ctx.spec):
        raise SpecError(f"study {ctx.spec.name!r} was created from a different spec than this one")
    if "mlflow_parent_run_id" not in study.user_attrs:
        raise SpecError(f"study {ctx.spec.name!r} has no MLflow parent run yet: start it with `study run` first")
    ctx = dataclasses.replace(
        ctx, n_trials=int(study.user_attrs.get("n_trials", ctx.n_trials)),
        tracking_uri=_worker_tracking_uri(study.user_attrs.get("mlflow_tracking_uri"), ctx.tracking_uri))
    sigterm_interrupts()
    try:
        # A worker on another host: its sampler seed must differ from every other worker's.
        driver.work(ctx, worker=os.getpid(), on_trial=lambda s: console.print(study_line(s)), storage=storage)
    except (KeyboardInterrupt, SystemExit):
        console.print("worker interrupted: its trial was marked FAIL and its run KILLED")
        return 130
    return 0


def _worker_tracking_uri(stored: str | None, own: str) -> str:
    """The study's tracking store for a joining worker: stored masked, so a password comes from the worker."""
    if not stored or mask_url(own) == stored:
        return own
    if "***" in stored:
        raise SpecError(f"the study tracks to {stored}: pass --tracking-uri with its password (or set "
                        f"MLFLOW_TRACKING_URI); it is never stored")
    return stored


def _print_summary(study: optuna.Study, ctx: driver.StudyContext, out: Console) -> None:
    out.print(f"study {study.study_name}: {study_line(study)}")
    best = driver.best_trial(study)
    if best is not None:
        params = shown_params(best, ctx)  # a sampled mapping as its pairs
        out.print(f"best trial #{best.number}: dev F1 {best.value * 100:.2f}  params {params}  "
                  f"MLflow run {best.user_attrs.get('mlflow_run_id', '-')}")
    out.print(f"Optuna storage: {mask_url(ctx.storage_url)}   MLflow: {mask_url(ctx.tracking_uri)}   "
              "(distill-lab ui; distill-lab report)")


def study_name(spec_or_name: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The study name of a spec file (after its --set overrides, as `study run` named it), or the
    argument itself when it is a name."""
    path = Path(spec_or_name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_spec(path, overrides).name
    if overrides:
        raise DistillLabError(f"--set needs a spec file; {spec_or_name!r} is a study name (or a missing file)")
    return spec_or_name


def print_status(spec_or_name: str, storage: str | None, out: Console, overrides: list[str] | tuple[str, ...] = ()) -> None:
    name = study_name(spec_or_name, overrides)
    storage_url = storage or driver.default_storage()
    study = driver.load_study(name, storage_url)
    table = Table(title=f"study {name} ({mask_url(storage_url)})")
    for column in ("#", "state", "params", "dev F1", "MLflow run", "seconds", "progress / reason"):
        # A run id is what one copies into the MLflow UI: never wrapped; params fold, reasons are cut.
        table.add_column(column, no_wrap=column == "MLflow run", min_width=32 if column == "MLflow run" else None,
                         overflow="ellipsis" if column == "progress / reason" else "fold")
    replay = None
    if any(map(samples_mapping, study.get_trials(deepcopy=False))) and "spec" in study.user_attrs:
        try:  # the study's models' configs (no weights): a sampled mapping then shows as its pairs
            replay = driver.replay_context(study, storage_url)
        except DistillLabError:
            pass  # e.g. a model not installed on this machine: Optuna's offsets, as stored
    for row in driver.trials_table(study, replay):
        value = f"{row['value'] * 100:.2f}" if row["value"] is not None else "-"
        seconds = f"{row['seconds']:.0f}" if row["seconds"] is not None else "-"
        table.add_row(str(row["number"]), row["state"], row["params"], value, row["mlflow_run_id"], seconds,
                      row["progress"] or row["reason"][:60])
    out.print(table)
    out.print(study_line(study))


def best_params(spec_or_name: str, storage: str | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The best COMPLETE trial of a study: number, value and its search-space values by dotted key.

    The values are the resolved ones (a sampled monotone mapping comes back as the explicit pairs it
    stands for), so `KEY=VALUE` lines of them are valid `--set` overrides for another spec, e.g. to
    rerun the winner of a search with more seeds.
    """
    name = study_name(spec_or_name, overrides)
    storage_url = storage or driver.default_storage()
    study = driver.load_study(name, storage_url)
    trial = driver.find_trial(study, best=True)
    params = driver.rerun_params(trial, driver.replay_context(study, storage_url))
    return {"study": name, "trial": trial.number, "value": trial.value,
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""), "params": params}


def print_best(spec_or_name: str, storage: str | None, as_set: bool, out: Console,
               overrides: list[str] | tuple[str, ...] = ()) -> None:
    best = best_params(spec_or_name, storage, overrides)
    if as_set:
        for key, value in best["params"].items():
            out.print(f"{key}={json.dumps(value, sort_keys=True)}", markup=False, highlight=False, soft_wrap=True)
        return
    out.print(json.dumps(best, indent=2, sort_keys=True, default=str), markup=False, highlight=False, soft_wrap=True)


def rerun_trial(study_name: str, trial_number: int | None, run_id: str | None, storage: str | None,
                tracking_uri: str | None, as_json: bool, out: Console, console: Console) -> int:
    """Replay a trial's params and seeds; print recorded vs re-run dev F1 per seed."""
    storage_url = storage or driver.default_storage()
    study = driver.load_study(study_name, storage_url)
    trial = driver.find_trial(study, trial_number, run_id)
    ctx = driver.replay_context(study, storage_url)
    spec = ctx.spec
    params = driver.rerun_params(trial, ctx)
    recorded = trial.user_attrs.get("dev_f1_per_seed", {})
    rows = []
    for seed in ctx.seeds:
        # Every step trained again (no resume point of a killed run): the check is the point.
        config = resolve(spec, {**params, "training.seed": seed, "training.resume_every_minutes": 0})
        result = run_distillation(config)
        before = recorded.get(str(seed))
        now = result.train_result.best_dev_f1
        rows.append({"seed": seed, "recorded_dev_f1": before, "rerun_dev_f1": now,
                     "match_4dp": before is not None and round(before, 4) == round(now, 4)})
    if as_json:
        print(json.dumps({"study": study_name, "trial": trial.number, "params": params, "seeds": rows}, indent=2,
                         default=str))
    else:
        table = Table(title=f"rerun of trial #{trial.number} of {study_name}")
        for column in ("seed", "recorded dev F1", "rerun dev F1", "same to 4 decimals"):
            table.add_column(column)
        for row in rows:
            recorded_text = f"{row['recorded_dev_f1']:.6f}" if row["recorded_dev_f1"] is not None else "-"
            table.add_row(str(row["seed"]), recorded_text, f"{row['rerun_dev_f1']:.6f}", str(row["match_4dp"]))
        out.print(table)
    return 0 if all(row["match_4dp"] for row in rows) else 1


def print_run_summary(summary: dict[str, Any], out: Console) -> None:
    """`distill-lab run`: the teacher and student scores, per-type F1, setting, losses, speed."""
    teacher, student = summary["teacher"], summary["student"]
    table = Table(title=f"distill-lab run: {summary['name']}", show_lines=False)
    table.add_column("model")
    table.add_column("dev F1", justify="right")
    table.add_column("test F1", justify="right")
    table.add_column("params", justify="right")
    reused = " (cached)" if teacher["reused"] else ""
    table.add_row(f"teacher {teacher['model']} ({teacher['layers']} layers){reused}", f"{teacher['dev_f1'] * 100:.2f}",
                  f"{teacher['test_f1'] * 100:.2f}", f"{teacher['params']:,}")
    table.add_row(f"student ({student['layers']} layers, init={student['init']})", f"{student['dev_f1'] * 100:.2f}",
                  f"{student['test_f1'] * 100:.2f}", f"{student['params']:,}")
    out.print(table)
    per_type = Table(title="student F1 per entity type")
    per_type.add_column("type")
    per_type.add_column("dev F1", justify="right")
    per_type.add_column("test F1", justify="right")
    for entity, value in student["dev_f1_per_type"].items():
        per_type.add_row(entity, f"{value * 100:.2f}", f"{student['test_f1_per_type'].get(entity, 0.0) * 100:.2f}")
    out.print(per_type)
    distill = summary["distill"]
    losses = ", ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in summary["losses"].items())
    out.print(f"setting: T={distill['temperature']:g} alphas(hard/soft/hidden/attn)="
              f"{'/'.join(f'{a:g}' for a in distill['alphas'])} map={distill['layer_mapping'] or '-'}")
    out.print(f"last losses: {losses}")
    out.print(f"retention {summary['retention'] * 100:.1f}% of teacher dev F1, compression {summary['compression']:.2f}x, "
              f"train-sample F1 {student['train_sample_f1'] * 100:.2f}, diagnosis: {summary['diagnosis']} "
              f"({summary['advice']})")
    speed = summary["inference"] and (f", inference {summary['inference']['student_sentences_per_s']:.0f} vs teacher "
                                      f"{summary['inference']['teacher_sentences_per_s']:.0f} sentences/s "
                                      f"({summary['inference']['speedup']:.2f}x)")
    out.print(f"{summary['steps']} steps, {summary['tokens_per_second']:.0f} tokens/s, wall time "
              f"{summary['wall_seconds']:.1f} s{speed or ''}")
