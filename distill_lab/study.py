"""Optuna driver: storage, sampler, pruner, objective, workers, resume.

One machine: a JournalStorage file under .distill_lab/ (safe for several local worker processes)
and MLflow's local sqlite store. Many machines: Optuna RDB storage (PostgreSQL) and an MLflow
tracking server. The MLflow parent run of a study is created once; its id lives in the study's
user attrs so workers on any host attach their trial runs to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import signal
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from distill_lab import models, naming, precision, search_space
from distill_lab.errors import DistillLabError, SpecError, TrialError
from distill_lab.masking import mask_url, scrub
from distill_lab.paths import home_dir
from distill_lab.spec import StudySpec, resolve
from distill_lab.tracking import Tracker, TrackingError, confusion_figure, deferred_interrupts, predictions_tsv

log = logging.getLogger(__name__)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_SECONDS = 2.0
# Heartbeat of RDB storages: a worker silent for GRACE seconds is dead and its trial re-queued.
HEARTBEAT_INTERVAL = int(os.environ.get("DISTILL_LAB_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("DISTILL_LAB_GRACE_PERIOD", "40"))


# --------------------------------------------------------------------------- storage
def default_storage() -> str:
    return str(home_dir() / "optuna.journal")


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith((".journal", ".log"))


def open_storage(url: str, *, workers: int = 1, tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """Optuna storage from a URL or journal file path (never the MLflow database)."""
    if tracking_uri and _same_database(url, tracking_uri):
        raise SpecError(
            f"--storage {mask_url(url)} is the MLflow tracking database: Optuna and MLflow both keep an alembic_version "
            "table and must not share one database; use another database or the default journal file"
        )
    if is_journal(url):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SpecError(f"--storage {path}: cannot create its directory {path.parent} "
                            f"({err.strerror or type(err).__name__})") from None
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite") and workers > 1:
        raise SpecError(
            f"--storage {mask_url(url)}: SQLite cannot serve {workers} concurrent workers well (\"database is locked\"); "
            "omit --storage to use the journal file under .distill_lab/, or use PostgreSQL "
            "(--storage postgresql+psycopg2://user@host/db)"
        )
    kwargs: dict[str, Any] = {}
    engine_kwargs: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        # Dead workers are detected by heartbeat and their trials re-queued by Optuna itself.
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        # Optuna >= 4.9 names the hook heartbeat_stale_trial_callback (failed_trial_callback is deprecated).
        hook = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")
        kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD, hook: retry}
        # Small pools: many workers share one PostgreSQL server (max_connections is ~100).
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 2, "pool_recycle": 300}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as err:  # noqa: BLE001 - connection/driver errors become one line
        raise DistillLabError(f"--storage {mask_url(url)}: cannot open Optuna storage: "
                              f"{scrub(str(err).splitlines()[0], url)}") from None


def _same_database(storage_url: str, tracking_uri: str) -> bool:
    def normalise(url: str) -> str:
        url = url.replace("+psycopg2", "").replace("+pymysql", "")
        if url.startswith("sqlite:///"):
            return "sqlite:" + str(Path(url[10:]).resolve())
        return url.rstrip("/")

    return normalise(storage_url) == normalise(tracking_uri)


# --------------------------------------------------------------------------- study setup
def spec_digest(spec: StudySpec) -> str:
    """What must not change between a study and its resumption (n_trials may).

    Values equal to their defaults are left out, so a later version that adds a setting (with a
    default) still resumes the studies an earlier one created, and writing a default out changes nothing.
    """
    payload = spec.model_dump(mode="json", exclude_defaults=True,
                              exclude={"description": True, "tracking": True, "study": {"n_trials", "timeout"}})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class StudyContext:
    spec: StudySpec
    storage_url: str
    tracking_uri: str
    n_trials: int
    n_teacher: int
    n_student: int
    save_best: bool = False
    timeout: float | None = None

    @property
    def seeds(self) -> list[int]:
        return self.spec.study.seeds or [self.spec.training.seed]


def layer_counts(spec: StudySpec) -> tuple[int, int]:
    teacher_ref = models.resolve_reference(spec.teacher.model, trust_remote_code=spec.teacher.trust_remote_code,
                                           field="teacher.model")
    n_teacher = models.num_layers(models.load_config(teacher_ref))
    if spec.student.model:
        n_student = models.num_layers(models.load_config(models.resolve_reference(spec.student.model,
                                                                                  field="student.model")))
    else:
        n_student = spec.student.from_teacher.num_layers if spec.student.from_teacher else 3
    return n_teacher, n_student


def check_against_models(spec: StudySpec) -> tuple[int, int]:
    """Checks that need the real layer counts (model configs only, no weights): the spec's base run."""
    from distill_lab.pipeline import check_models

    check_models(resolve(spec))
    return layer_counts(spec)


def create_or_load(ctx: StudyContext, storage: optuna.storages.BaseStorage) -> optuna.Study:
    spec = ctx.spec
    study = optuna.create_study(
        study_name=spec.name, storage=storage, direction=spec.study.direction, load_if_exists=True,
        sampler=search_space.sampler_for(spec), pruner=search_space.pruner_for(spec))
    attrs = study.user_attrs
    digest = spec_digest(spec)
    if "spec_digest" in attrs and attrs["spec_digest"] != digest:
        raise SpecError(
            f"study {spec.name!r} already exists in {mask_url(ctx.storage_url)} with a different spec; "
            f"give this one a new name (--set name=...) or use another --storage"
        )
    if "spec_digest" not in attrs:
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("spec_digest", digest)
    study.set_user_attr("n_trials", ctx.n_trials)
    return study


def load_study(name: str, storage_url: str) -> optuna.Study:
    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise SpecError(f"no study {name!r} in {mask_url(storage_url)}; studies there: {', '.join(names) or 'none'}") from None


def spec_of(study: optuna.Study) -> StudySpec:
    return StudySpec.model_validate(study.user_attrs["spec"])


def ensure_tracking(ctx: StudyContext, study: optuna.Study, tracker: Tracker) -> tuple[str, str]:
    """Experiment and parent run, created once (before any worker starts) and kept in user attrs."""
    attrs = study.user_attrs
    # Stored masked: the Optuna storage (and optuna-dashboard) never holds the tracking password.
    if attrs.get("mlflow_parent_run_id") and attrs.get("mlflow_tracking_uri") == mask_url(ctx.tracking_uri):
        return attrs["mlflow_experiment_id"], attrs["mlflow_parent_run_id"]
    experiment_id = tracker.ensure_experiment(ctx.spec.tracking.experiment or ctx.spec.name)
    parent = tracker.create_run(experiment_id, f"study {ctx.spec.name}", tags={
        "role": "study", "study": ctx.spec.name, "optuna_storage": mask_url(ctx.storage_url),
        "mlflow.note.content": ctx.spec.description or ""})
    handle_params = {"study." + k: v for k, v in ctx.spec.study.model_dump(mode="json").items() if k != "search_space"}
    handle_params["study.search_space"] = json.dumps(ctx.spec.study.model_dump(mode="json")["search_space"])
    from distill_lab.tracking import RunHandle

    RunHandle(tracker.client, parent).log_params(handle_params)
    study.set_user_attr("mlflow_tracking_uri", mask_url(ctx.tracking_uri))
    study.set_user_attr("mlflow_experiment_id", experiment_id)
    study.set_user_attr("mlflow_parent_run_id", parent)
    return experiment_id, parent


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another host: its heartbeat (RDB storage) decides
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def reconcile(study: optuna.Study, ctx: StudyContext, tracker: Tracker | None) -> int:
    """After a crash: fail trials whose local worker died, end their runs FAILED, re-queue grid points."""
    fixed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        if owner and not _alive(owner):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {owner} died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            fixed += 1
            run_id = trial.user_attrs.get("mlflow_run_id")
            if tracker and run_id:
                try:
                    tracker.client.set_tag(run_id, "error", f"worker {owner} died")
                    tracker.client.set_tag(run_id, "optuna_state", "FAIL")
                    tracker.end_run(run_id, "FAILED")
                except Exception:  # noqa: BLE001 - the run may be on an unreachable server
                    log.warning("could not end MLflow run %s", run_id)
    if search_space.is_grid(ctx.spec):
        enqueue_missing_grid_points(study, ctx.spec)
    return fixed


def enqueue_missing_grid_points(study: optuna.Study, spec: StudySpec) -> int:
    """Each grid point gets exactly one trial: enqueue points without a finished/queued/running one."""
    taken = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (*FINISHED_STATES, TrialState.WAITING, TrialState.RUNNING):
            params = trial.params or trial.system_attrs.get("fixed_params", {})
            taken.append(json.dumps(params, sort_keys=True))
    missing = [point for point in search_space.grid_points(spec) if json.dumps(point, sort_keys=True) not in taken]
    for point in missing:
        study.enqueue_trial(point, skip_if_exists=False)
    return len(missing)


def end_orphan_runs(study: optuna.Study, tracker: Tracker, experiment_id: str) -> int:
    """End FAILED the MLflow trial runs still RUNNING whose Optuna trial has failed.

    That happens when a worker is killed -9 or its heartbeat went stale. Matching goes through the
    run's `optuna_trial_id` tag, which is set when the run is created (no race with the trial attr).
    The runs are read before the trials, and only a FAIL trial (or one this study does not have)
    orphans its run: a trial asked after the read, or one that completed after it (its owner ends
    the run FINISHED before it tells the trial), is never mistaken for a dead one.
    """
    candidates = [run for run in tracker.runs_in_state(experiment_id)
                  if run.data.tags.get("study") == study.study_name and run.data.tags.get("role") == "trial"]
    if not candidates:
        return 0
    states = {t._trial_id: t.state for t in study.get_trials(deepcopy=False)}
    ended = 0
    for run in candidates:
        if states.get(int(run.data.tags.get("optuna_trial_id", -1)), TrialState.FAIL) != TrialState.FAIL:
            continue
        tracker.client.set_tag(run.info.run_id, "error", "worker died before the run ended")
        tracker.client.set_tag(run.info.run_id, "optuna_state", "FAIL")
        tracker.end_run(run.info.run_id, "FAILED")
        ended += 1
    return ended


# --------------------------------------------------------------------------- one trial
_CORPUS_CACHE: dict[str, Any] = {}


def _corpus_for(config: Any) -> Any:
    from distill_lab.data.loader import load_corpus

    key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
    if key not in _CORPUS_CACHE:
        _CORPUS_CACHE[key] = load_corpus(config.data)
    return _CORPUS_CACHE[key]


def sampled_params(trial: optuna.trial.BaseTrial, ctx: StudyContext) -> dict[str, Any]:
    return search_space.suggest(trial, ctx.spec, n_teacher=ctx.n_teacher, n_student=ctx.n_student)


def run_trial(trial: optuna.Trial, ctx: StudyContext, tracker: Tracker, experiment_id: str, parent_run_id: str,
              stage: Callable[[str, int, int], None] | None = None) -> float:
    """The objective: every seed of one sampled setting; returns the mean best dev F1."""
    from distill_lab.pipeline import run_distillation

    # optuna.Trial has no system_attrs (only FrozenTrial has): ask the storage.
    system_attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    retry_of = trial.user_attrs.get("mlflow_run_id") if "failed_trial" in system_attrs else None
    trial.set_user_attr("worker", _owner())
    params = sampled_params(trial, ctx)
    base = resolve(ctx.spec, params)
    tags = {"role": "trial", "study": ctx.spec.name, "trial_number": trial.number,
            "optuna_trial_id": trial._trial_id, "optuna_state": "RUNNING", "setting": naming.setting(base),
            "init": naming.init_name(base), "mapping": naming.mapping_name(base)}
    if retry_of:  # a re-queued trial of a dead worker links to the dead worker's run
        tags.update(retry_of_run=retry_of, retry_of_trial=system_attrs["failed_trial"])
    with tracker.run(experiment_id, naming.run_name(trial.number, base), tags=tags,
                     parent_run_id=parent_run_id) as run:
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({**base.flat(), "study.seeds": ctx.seeds, "optuna.trial_number": trial.number,
                        "optuna.params": json.dumps(params, default=str)})
        results = []
        try:
            for seed_index, seed in enumerate(ctx.seeds):
                config = resolve(ctx.spec, {**params, "training.seed": seed})
                prefix = "" if seed_index == 0 else f"seed{seed}_"

                def on_eval(step: int, metrics: dict[str, float], seed_index: int = seed_index,
                            prefix: str = prefix) -> bool:
                    logged = {f"{prefix}{k}": v for k, v in metrics.items() if k not in ("step", "epoch")}
                    run.log_metrics(logged, step=step, synchronous=False)
                    if seed_index == 0:  # pruning compares first-seed curves across trials
                        trial.report(metrics["dev_f1"], step)
                        return trial.should_prune()
                    return False

                result = run_distillation(config, on_eval=on_eval, stage=stage, corpus=_corpus_for(config))
                results.append(result)
                if result.train_result.stopped_early:
                    run.set_tags({"optuna_state": "PRUNED"})
                    _log_final(run, results, ctx, trial)
                    raise optuna.TrialPruned(f"pruned at step {result.train_result.steps}")
        except optuna.TrialPruned:
            raise
        except BaseException:
            # Any other way out (NaN, out of memory, a bug, Ctrl-C) makes the Optuna trial FAIL:
            # the tag must say so rather than stay RUNNING on a run that has ended.
            with contextlib.suppress(Exception):
                run.set_tags({"optuna_state": "FAIL"})
            raise
        value = _log_final(run, results, ctx, trial)
        _log_artifacts(run, results[0], base, ctx)
        run.set_tags({"optuna_state": "COMPLETE"})
        if ctx.save_best:
            _maybe_save_best(run, trial, results, value)
    return value


def _log_final(run: Any, results: list[Any], ctx: StudyContext, trial: optuna.Trial) -> float:
    first = results[0]
    # The kept checkpoint's dev F1 (training.checkpoint: best_dev or last); both are logged below.
    dev = [r.dev.f1 for r in results]
    test = [r.test.f1 for r in results]
    value = statistics.fmean(dev)
    teacher = first.teacher
    metrics = {
        "best_dev_f1": value,
        "best_dev_f1_std": statistics.stdev(dev) if len(dev) > 1 else 0.0,
        "test_f1": statistics.fmean(test),
        "test_f1_std": statistics.stdev(test) if len(test) > 1 else 0.0,
        "train_sample_f1": statistics.fmean(r.train_sample_f1 for r in results),
        "teacher_dev_f1": teacher.dev_f1,
        "teacher_test_f1": teacher.test_f1,
        "retention": value / teacher.dev_f1 if teacher.dev_f1 > 0 else 0.0,
        "student_params": first.student_params,
        "teacher_params": first.teacher_params,
        "compression": first.teacher_params / first.student_params,
        "tokens_per_second": statistics.fmean(r.train_result.tokens_per_second for r in results),
        "wall_seconds": sum(r.wall_seconds for r in results),
        "n_seeds": len(results),
        "dev_f1_best_eval": statistics.fmean(r.train_result.best_dev_f1 for r in results),
        "dev_f1_last_eval": statistics.fmean(
            r.train_result.last_dev_scores.f1 if r.train_result.last_dev_scores else r.dev.f1 for r in results),
    }
    for result in results:
        seed = result.config.training.seed
        metrics[f"dev_f1_seed{seed}"] = result.dev.f1
        metrics[f"test_f1_seed{seed}"] = result.test.f1
    for entity, score in first.dev.per_type.items():
        metrics[f"dev_f1_{entity}"] = score
    last_step = max(r.train_result.steps for r in results)
    run.log_metrics(metrics, step=last_step)
    # The MLflow UI's dev_f1 column shows the latest value: make that the best, not the last eval.
    run.log_metrics({"dev_f1": value}, step=last_step + 1)
    diagnosis = first.diagnosis
    run.set_tags({
        "teacher": naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
        "student": naming.student_name(models.num_layers(first.student), first.init.strategy),
        "student_model": naming.student_model_name(first.config, teacher.ref.display_name,
                                                   models.num_layers(first.student)),
        "diagnosis": diagnosis, "diagnosis_advice": first.advice,
        "teacher_fingerprint": teacher.fingerprint, "precision": first.precision,
        "checkpoint": first.config.training.checkpoint, "seeds": ",".join(str(r.config.training.seed) for r in results),
    })
    trial.set_user_attr("dev_f1_per_seed", {str(r.config.training.seed): r.dev.f1 for r in results})
    trial.set_user_attr("test_f1_per_seed", {str(r.config.training.seed): r.test.f1 for r in results})
    return value


def _log_artifacts(run: Any, result: Any, config: Any, ctx: StudyContext) -> None:
    if not ctx.spec.tracking.log_artifacts:
        return
    import yaml

    run.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")
    run.log_text(result.dev.report, "classification_report.txt")
    run.log_dict({"dev": result.dev.per_type, "test": result.test.per_type}, "per_type_f1.json")
    gold = [list(s.tags or ()) for s in result.dev_sentences]
    figure = confusion_figure(gold, result.dev_predictions, result.labels)
    run.log_figure(figure, "confusion_matrix.png")
    run.log_text(predictions_tsv(result.dev_sentences, result.dev_predictions), "sample_predictions.tsv")


def _maybe_save_best(run: Any, trial: optuna.Trial, results: list[Any], value: float) -> None:
    study_best = [t.value for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.value is not None]
    if study_best and value < max(study_best):
        return
    from distill_lab.tracking import temporary_directory

    with temporary_directory() as directory:
        results[0].student.save_pretrained(directory, safe_serialization=True)
        results[0].student_tokenizer.save_pretrained(directory)
        run.log_artifacts(directory, "student")
    run.set_tags({"best_checkpoint": "student/"})


# --------------------------------------------------------------------------- workers
def _counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def work(ctx: StudyContext, *, worker: int = 0, on_trial: Callable[[optuna.Study], None] | None = None,
         stage: Callable[[str, int, int], None] | None = None) -> None:
    """One worker: take trials until the study has n_trials finished (or the grid is exhausted)."""
    storage = open_storage(ctx.storage_url, tracking_uri=ctx.tracking_uri)
    study = optuna.load_study(study_name=ctx.spec.name, storage=storage,
                              sampler=search_space.sampler_for(ctx.spec, worker),
                              pruner=search_space.pruner_for(ctx.spec))
    tracker = Tracker(ctx.tracking_uri)
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    parent_run_id = study.user_attrs["mlflow_parent_run_id"]
    grid = search_space.is_grid(ctx.spec)
    heartbeat = is_heartbeat_enabled(study._storage)
    started = time.monotonic()
    failures = 0
    while True:
        counts = _counts(study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= ctx.n_trials:
            break
        if ctx.timeout and time.monotonic() - started > ctx.timeout:
            break
        running = counts[TrialState.RUNNING]
        nothing_to_take = (counts[TrialState.WAITING] == 0) if grid else (finished + running >= ctx.n_trials)
        if nothing_to_take:
            if not (heartbeat and running):
                break
            # A running trial may still die and be re-queued by its stale heartbeat: wait and look again.
            time.sleep(POLL_SECONDS)
            optuna.storages.fail_stale_trials(study)
            end_orphan_runs(study, tracker, experiment_id)
            continue
        if failures > max(3, ctx.n_trials):
            log.warning("stopping: %d trials failed in this worker", failures)
            break
        if heartbeat:
            # Optuna's own machinery: trials of workers whose heartbeat stopped become FAIL and are
            # re-queued by RetryHeartbeatStaleTrialCallback; their MLflow runs are ended FAILED.
            optuna.storages.fail_stale_trials(study)
            end_orphan_runs(study, tracker, experiment_id)
        trial = study.ask()
        if _surplus(study, trial, ctx.n_trials, grid=grid):
            # Workers that checked the count at the same moment: the earlier trials already make up
            # n_trials (or took the last queued grid point), so this one is not run (recorded FAIL
            # with its reason, nothing tracked) -- a grid sampler would otherwise rerun a done point.
            trial.set_user_attr("fail_reason", "surplus: every grid point was already taken" if grid
                                else f"surplus: {ctx.n_trials} trials were already finished or running")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if grid:
                continue  # a dead worker's point may still come back to the queue: look again
            break
        value = None
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                value = run_trial(trial, ctx, tracker, experiment_id, parent_run_id, stage=stage)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        except (KeyboardInterrupt, SystemExit):
            if value is not None:  # the run had already ended FINISHED: keep its result, then stop
                with deferred_interrupts():
                    study.tell(trial, value, skip_if_finished=True)
                raise
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id:  # an interrupt during the run's close: the run is KILLED, its tag must agree
                with contextlib.suppress(Exception):
                    tracker.client.set_tag(run_id, "optuna_state", "FAIL")
            if grid:  # the point goes back to the queue for another worker
                study.enqueue_trial(trial.params)
            raise
        except Exception as err:  # noqa: BLE001 - like optuna's _run_trial: record, fail the trial, go on
            failures += 1
            reason = repr(err) if not isinstance(err, DistillLabError) else f"{type(err).__name__}: {err}"
            log.warning("trial %d failed with params %s: %s", trial.number, trial.params, reason)
            trial.set_user_attr("fail_reason", reason[:2000])
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        else:
            # skip_if_finished: a trial judged stale (starved heartbeat) was already failed and re-queued.
            # Interrupts wait for the tell: a FINISHED run must not end up beside a FAIL trial.
            with deferred_interrupts():
                study.tell(trial, value, skip_if_finished=True)
        if on_trial is not None:
            on_trial(study)


def _surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int, *, grid: bool = False) -> bool:
    if grid:
        # Every grid point is enqueued up front (enqueue_missing_grid_points): a trial that did not
        # come from the queue was created because another worker took the last queued point
        # between this worker's count and its ask.
        return "fixed_params" not in study._storage.get_trial_system_attrs(trial._trial_id)
    earlier = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED_STATES, TrialState.RUNNING))
               if t.number < trial.number]
    return len(earlier) >= n_trials


def _worker_process(ctx: StudyContext, threads: int, worker: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _install_sigterm()
    logging.basicConfig(level=logging.WARNING)
    _quiet()
    try:
        work(ctx, worker=worker)
    except (KeyboardInterrupt, SystemExit):
        os._exit(130)


def _install_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def spawn_workers(ctx: StudyContext, workers: int) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_process, args=(ctx, threads_per_worker(workers), i + 1),
                                 name=f"distill-lab-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    return processes


# --------------------------------------------------------------------------- summaries
def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        params = {k: search_space.decode(v) for k, v in (trial.params or {}).items()}
        rows.append({
            "number": trial.number, "state": trial.state.name, "value": trial.value,
            "params": naming.compact_params(params),
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""),
            "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else None,
            "reason": trial.user_attrs.get("fail_reason", ""),
        })
    return rows


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    key = (lambda t: t.value) if study.direction == optuna.study.StudyDirection.MAXIMIZE else (lambda t: -t.value)
    return max(complete, key=key)


def finished_count(study: optuna.Study) -> int:
    counts = _counts(study)
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def grid_size(spec: StudySpec) -> int:
    return len(search_space.grid_points(spec)) if search_space.is_grid(spec) else 0


def target_trials(spec: StudySpec, n_trials: int | None) -> int:
    if search_space.is_grid(spec):
        return grid_size(spec)
    return n_trials or spec.study.n_trials


def rerun_params(study: optuna.Study, trial: optuna.trial.FrozenTrial, ctx: StudyContext) -> dict[str, Any]:
    """The exact sampled params of a recorded trial, replayed through the same search space."""
    return sampled_params(optuna.trial.FixedTrial(trial.params, number=trial.number), ctx)



__all__ = [
    "StudyContext", "TrackingError", "TrialError", "create_or_load", "default_storage", "ensure_tracking",
    "load_study", "open_storage", "reconcile", "run_trial", "spawn_workers", "work",
]


# --------------------------------------------------------------------------- orchestration
def prepare_shared_teacher(ctx: StudyContext, tracker: Tracker, experiment_id: str, parent_run_id: str,
                           stage: Callable[[str, int, int], None] | None = None) -> Any:
    """Fine-tune (or load) the teacher once before workers start, and track it as its own run."""
    from distill_lab.pipeline import resolve_device
    from distill_lab.teacher import prepare_teacher

    config = resolve(ctx.spec)
    if config.training.num_threads:
        import torch

        torch.set_num_threads(config.training.num_threads)
    corpus = _corpus_for(config)
    device = resolve_device(config.training.device)
    # The same precision the trials resolve: otherwise the study fine-tunes an fp32 teacher here and
    # every trial a second, bf16 one (another cache key).
    teacher = prepare_teacher(config, corpus, device=device, precision=precision.resolve(config.training.precision, device),
                              progress=stage and (lambda done, total: stage("teacher fine-tune", done, total)))
    if tracker.find_run(experiment_id, {"role": "teacher", "teacher_fingerprint": teacher.fingerprint}) is None:
        tags = {"role": "teacher", "study": ctx.spec.name, "teacher_fingerprint": teacher.fingerprint,
                "teacher": naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
                "reused_from_cache": teacher.reused}
        with tracker.run(experiment_id, f"teacher {teacher.ref.display_name}", tags=tags,
                         parent_run_id=parent_run_id) as run:
            recipe = config.teacher.finetune.model_dump() if config.teacher.finetune else {}
            run.log_params({"teacher.model": config.teacher.model, "teacher.checkpoint": config.teacher.checkpoint,
                            **{f"teacher.finetune.{k}": v for k, v in recipe.items()},
                            "data.max_length": config.data.max_length})
            run.log_metrics({"dev_f1": teacher.dev_f1, "test_f1": teacher.test_f1,
                             "teacher_params": models.count_parameters(teacher.model),
                             "fine_tune_seconds": teacher.fine_tune_seconds})
    return teacher
