"""The worker loop and everything that keeps a study's trials and runs consistent across workers.

A worker takes trials until the study has `n_trials` finished (or its grid is exhausted), runs each
through the objective, decides the trial's state once and tells Optuna once. Around it: the MLflow
parent run created once, crash recovery (`reconcile`), runs orphaned by dead workers, and the
local worker processes of `study run --workers N`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import time
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from distill_lab import search_space
from distill_lab.errors import DistillLabError
from distill_lab.masking import mask_url
from distill_lab.record_schema import OPTUNA_STATE, ROLE, STUDY_TAG, TRIAL, TRIAL_ID, StudyRecord
from distill_lab.runtime import quiet_libraries
from distill_lab.signals import deferred_interrupts, interrupted, worker_interrupts
from distill_lab.spec import StudySpec
from distill_lab.study import optuna_compat
from distill_lab.study.background import BackgroundWriter
from distill_lab.study.objective import Stage, run_trial
from distill_lab.study.storage import FINISHED_STATES, StudyContext, open_storage, owner_alive, owner_name
from distill_lab.study.summary import state_counts
from distill_lab.tracking import RunHandle, Tracker

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


# Parent runs of one study created this close together are one start raced by another: the earliest wins.
PARENT_RACE_SECONDS = 120


def ensure_tracking(ctx: StudyContext, study: optuna.Study, tracker: Tracker) -> tuple[str, str]:
    """Experiment and parent run, created once (before any worker starts) and kept in user attrs.

    Two `study run` started at once on one study both find no parent in the user attrs and both
    create one. Optuna's user attrs have no compare-and-set, so MLflow decides: after creating its
    own, each process lists the study's parent runs started within PARENT_RACE_SECONDS of its own
    and keeps the earliest (start time, then run id), deleting its own if it lost. The earliest one
    is the same for every process that can see it, so there is exactly one parent run.
    """
    attrs = study.user_attrs
    # Stored masked: the Optuna storage (and optuna-dashboard) never holds the tracking password.
    if attrs.get("mlflow_parent_run_id") and attrs.get("mlflow_tracking_uri") == mask_url(ctx.tracking_uri):
        return attrs["mlflow_experiment_id"], attrs["mlflow_parent_run_id"]
    experiment_id = tracker.ensure_experiment(ctx.spec.tracking.experiment or ctx.spec.name)
    tracker.tag_experiment(experiment_id, StudyRecord.experiment_tags(ctx.spec.written()))
    record = StudyRecord(study=ctx.spec.name, optuna_storage=mask_url(ctx.storage_url),
                         description=str(ctx.spec.written().get("description") or ""))
    mine = tracker.create_run(experiment_id, f"study {ctx.spec.name}", tags=record.to_mlflow())
    parent = _earliest_parent(tracker, experiment_id, record.identity(), mine)
    if parent != mine:
        tracker.client.delete_run(mine)
        log.info("another study run created parent run %s at the same time: using it", parent)
    else:
        RunHandle(tracker.client, parent).log_params(StudyRecord.params(ctx.spec.study.model_dump(mode="json")))
    study.set_user_attr("mlflow_tracking_uri", mask_url(ctx.tracking_uri))
    study.set_user_attr("mlflow_experiment_id", experiment_id)
    study.set_user_attr("mlflow_parent_run_id", parent)
    return experiment_id, parent


def _earliest_parent(tracker: Tracker, experiment_id: str, tags: dict[str, str], mine: str) -> str:
    own_start = tracker.client.get_run(mine).info.start_time
    rivals = [(run.info.start_time, run.info.run_id) for run in tracker.find_runs(experiment_id, tags)
              if abs(run.info.start_time - own_start) <= PARENT_RACE_SECONDS * 1000]
    return min([*rivals, (own_start, mine)])[1]


def reconcile(study: optuna.Study, ctx: StudyContext, tracker: Tracker | None) -> int:
    """After a crash: fail trials whose local worker died, end their runs FAILED, re-queue grid points."""
    fixed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        if owner and not owner_alive(owner):
            optuna_compat.fail_trial(study, trial, f"worker {owner} died")
            fixed += 1
            run_id = trial.user_attrs.get("mlflow_run_id")
            if tracker and run_id:
                _end_run_failed(tracker, run_id, f"worker {owner} died")
    if search_space.is_grid(ctx.spec):
        enqueue_missing_grid_points(study, ctx.spec)
    return fixed


def _end_run_failed(tracker: Tracker, run_id: str, reason: str, status: str = "FAILED") -> None:
    try:
        tracker.client.set_tag(run_id, "error", reason)
        tracker.client.set_tag(run_id, OPTUNA_STATE, "FAIL")
        tracker.end_run(run_id, status)
    except Exception:  # noqa: BLE001 - the run may be on an unreachable server
        log.warning("could not end MLflow run %s", run_id)


def enqueue_missing_grid_points(study: optuna.Study, spec: StudySpec) -> int:
    """Each grid point gets exactly one trial: enqueue points without a finished/queued/running one."""
    taken = {_grid_point(trial) for trial in study.get_trials(
        deepcopy=False, states=(*FINISHED_STATES, TrialState.WAITING, TrialState.RUNNING))}
    missing = [point for point in search_space.grid_points(spec) if json.dumps(point, sort_keys=True) not in taken]
    for point in missing:
        study.enqueue_trial(point, skip_if_exists=False)
    return len(missing)


def _grid_point(trial: optuna.trial.FrozenTrial) -> str:
    """The grid point a trial stands for: its params once sampled, its queued fixed params before."""
    return json.dumps(trial.params or trial.system_attrs.get("fixed_params", {}), sort_keys=True)


def end_orphan_runs(study: optuna.Study, tracker: Tracker, experiment_id: str) -> int:
    """End the MLflow trial runs still RUNNING whose Optuna trial has failed: FAILED, or KILLED
    where the trial failed because its worker was interrupted.

    That happens when a worker is killed -9 or its heartbeat went stale. Matching goes through the
    run's `optuna_trial_id` tag, which is set when the run is created (no race with the trial attr).
    The runs are read before the trials, and only a FAIL trial (or one this study does not have)
    orphans its run: a trial asked after the read is never mistaken for a dead one. A COMPLETE
    trial's run stays RUNNING while its worker writes the artifacts (after the tell); it is ended
    here only when that worker is a local process that is gone: FINISHED, its artifacts said lost.
    """
    candidates = [run for run in tracker.runs_in_state(experiment_id)
                  if run.data.tags.get(STUDY_TAG) == study.study_name and run.data.tags.get(ROLE) == TRIAL]
    if not candidates:
        return 0
    trials = {optuna_compat.trial_id(t): t for t in study.get_trials(deepcopy=False)}
    ended = 0
    for run in candidates:
        trial = trials.get(int(run.data.tags.get(TRIAL_ID, -1)))
        completed_by_dead = trial is not None and trial.state == TrialState.COMPLETE and \
            not owner_alive(trial.user_attrs.get("worker") or "")
        if trial is not None and trial.state != TrialState.FAIL and not completed_by_dead:
            continue
        if tracker.client.get_run(run.info.run_id).info.status != "RUNNING":
            continue  # its owner ended it after the first read (an interrupted worker ends it, then fails the trial)
        if completed_by_dead:
            with contextlib.suppress(Exception):
                tracker.client.set_tag(run.info.run_id, "artifact_error", "lost: the worker died before writing them")
                tracker.end_run(run.info.run_id, "FINISHED")
        elif trial is not None and trial.user_attrs.get("fail_reason") == "interrupted":
            # Its worker was interrupted and failed the trial, but could not end the run (the
            # store did not answer in time): the run was stopped, not broken.
            _end_run_failed(tracker, run.info.run_id, "interrupted before the run ended", status="KILLED")
        else:
            _end_run_failed(tracker, run.info.run_id, "worker died before the run ended")
        ended += 1
    return ended


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int, *, grid: bool) -> bool:
    """A trial asked by workers that counted at the same moment, beyond what the study needs."""
    if grid:
        # Every grid point is enqueued up front (enqueue_missing_grid_points): a trial that did not
        # come from the queue was created because another worker took the last queued point
        # between this worker's count and its ask. Two `study run`s started together both enqueue
        # the missing points: a queued point an earlier trial already holds (running or finished) is
        # surplus too, so each point still runs once.
        fixed = optuna_compat.system_attrs(study, trial).get("fixed_params")
        if fixed is None:
            return True
        point = json.dumps(fixed, sort_keys=True)
        holders = study.get_trials(deepcopy=False, states=(*FINISHED_STATES, TrialState.RUNNING))
        return any(t.number < trial.number and _grid_point(t) == point for t in holders)
    earlier = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED_STATES, TrialState.RUNNING))
               if t.number < trial.number]
    return len(earlier) >= n_trials


class Worker:
    """One worker's loop over a study (`study run` in-process, `study worker`, or a spawned process)."""

    def __init__(self, ctx: StudyContext, *, worker: int = 0, stage: Stage | None = None,
                 storage: optuna.storages.BaseStorage | None = None) -> None:
        self.ctx, self.stage = ctx, stage
        # The process's own storage where it has one: each storage holds a connection (storage.POOL).
        if storage is None:
            storage = open_storage(ctx.storage_url, tracking_uri=ctx.tracking_uri)
        self.study = optuna.load_study(study_name=ctx.spec.name, storage=storage,
                                       sampler=search_space.sampler_for(ctx.spec, worker),
                                       pruner=search_space.pruner_for(ctx.spec))
        self.tracker = Tracker(ctx.tracking_uri)
        self.experiment_id = self.study.user_attrs["mlflow_experiment_id"]
        self.parent_run_id = self.study.user_attrs["mlflow_parent_run_id"]
        self.grid = search_space.is_grid(ctx.spec)
        self.heartbeat = optuna_compat.heartbeat_enabled(self.study)
        self.failures = 0
        self.writer = BackgroundWriter()  # completed trials' artifacts, after the tell

    def next_step(self, started: float) -> str:
        """`take` a new trial, `wait` for a running one that may still come back, or `stop`."""
        if interrupted():  # an interrupt whose KeyboardInterrupt Python swallowed
            raise KeyboardInterrupt("interrupted")
        counts = state_counts(self.study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        running = counts[TrialState.RUNNING]
        if finished >= self.ctx.n_trials or (self.ctx.timeout and time.monotonic() - started > self.ctx.timeout):
            return "stop"
        nothing_to_take = (counts[TrialState.WAITING] == 0) if self.grid else (finished + running >= self.ctx.n_trials)
        if nothing_to_take:
            # A running trial may still die and be re-queued by its stale heartbeat: wait and look again.
            return "wait" if self.heartbeat and running else "stop"
        if self.failures > max(3, self.ctx.n_trials):
            log.warning("stopping: %d trials failed in this worker", self.failures)
            return "stop"
        return "take"

    def clean_stale(self) -> None:
        """Optuna's own machinery: trials of workers whose heartbeat stopped become FAIL and are
        re-queued by RetryHeartbeatStaleTrialCallback; their MLflow runs are ended FAILED."""
        if self.heartbeat:
            optuna.storages.fail_stale_trials(self.study)
            end_orphan_runs(self.study, self.tracker, self.experiment_id)

    def run_one(self, trial: optuna.Trial) -> TrialState:
        """Run one trial: one try, its state decided once, one `tell` (an interrupt is re-raised after it)."""
        value, state, interrupt = None, TrialState.FAIL, None
        finishing: list[Callable[[], None]] = []  # the completed run's artifacts and end, after the tell
        try:
            with optuna_compat.heartbeat(self.study, trial):
                value = run_trial(trial, self.ctx, self.tracker, self.experiment_id, self.parent_run_id,
                                  stage=self.stage, defer=finishing.append)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (KeyboardInterrupt, SystemExit) as err:
            interrupt = err
            # A value means the run had already ended FINISHED: keep its result, then stop.
            state = TrialState.COMPLETE if value is not None else TrialState.FAIL
        except Exception as err:  # noqa: BLE001 - like optuna's _run_trial: record, fail the trial, go on
            reason = repr(err) if not isinstance(err, DistillLabError) else f"{type(err).__name__}: {err}"
            log.warning("trial %d failed with params %s: %s", trial.number, trial.params, reason)
            trial.set_user_attr("fail_reason", reason[:2000])
        if interrupt is not None and state is TrialState.FAIL:
            trial.set_user_attr("fail_reason", "interrupted")
        # skip_if_finished: a trial judged stale (starved heartbeat) was already failed and re-queued.
        # Interrupts wait for the tell: a FINISHED run must not end up beside a FAIL trial.
        try:
            with deferred_interrupts():
                self.study.tell(trial, value if state is TrialState.COMPLETE else None, state=state,
                                skip_if_finished=True)
        finally:
            for job in finishing:  # on the background thread; here at once when the worker is stopping
                self.writer.submit(job)
            if interrupt is not None:
                self.writer.drain()
        if interrupt is not None:
            if state is TrialState.FAIL:
                self._after_interrupted(trial)
            raise interrupt
        self.failures += state is TrialState.FAIL
        return state

    def _after_interrupted(self, trial: optuna.Trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:  # an interrupt during the run's close: the run is KILLED, its tag must agree
            with contextlib.suppress(Exception):
                self.tracker.client.set_tag(run_id, OPTUNA_STATE, "FAIL")
        if self.grid:  # the point goes back to the queue for another worker
            self.study.enqueue_trial(trial.params)


def work(ctx: StudyContext, *, worker: int = 0, on_trial: Callable[[optuna.Study], None] | None = None,
         stage: Stage | None = None, storage: optuna.storages.BaseStorage | None = None) -> None:
    """One worker: take trials until the study has n_trials finished (or the grid is exhausted)."""
    loop = Worker(ctx, worker=worker, stage=stage, storage=storage)
    try:
        _take_trials(loop, ctx, on_trial)
    finally:
        loop.writer.drain()  # every completed trial's artifacts written and its run ended before the worker goes


def _take_trials(loop: Worker, ctx: StudyContext, on_trial: Callable[[optuna.Study], None] | None) -> None:
    started = time.monotonic()
    while (step := loop.next_step(started)) != "stop":
        if step == "wait":
            time.sleep(POLL_SECONDS)
            loop.clean_stale()
            continue
        loop.clean_stale()
        # The trial names its worker as it is created: an interrupt between the two would leave a
        # RUNNING trial no reconcile can attribute to a dead worker (seen under load with Ctrl-C).
        with deferred_interrupts() as received:
            trial = loop.study.ask()
            trial.set_user_attr("worker", owner_name())
            if received:  # interrupted while asking: end the new trial here, then stop (after the block)
                trial.set_user_attr("fail_reason", "interrupted")
                loop.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if is_surplus(loop.study, trial, ctx.n_trials, grid=loop.grid):
            # Not run (recorded FAIL with its reason, nothing tracked): a grid sampler would otherwise rerun a done point.
            trial.set_user_attr("fail_reason", "surplus: every grid point was already taken" if loop.grid
                                else f"surplus: {ctx.n_trials} trials were already finished or running")
            loop.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if loop.grid:
                continue  # a dead worker's point may still come back to the queue: look again
            break
        loop.run_one(trial)
        if on_trial is not None:
            on_trial(loop.study)


def _worker_process(ctx: StudyContext, threads: int, worker: int) -> None:
    torch.set_num_threads(threads)
    worker_interrupts()
    logging.basicConfig(level=logging.WARNING)
    quiet_libraries()
    try:
        work(ctx, worker=worker)
    except (KeyboardInterrupt, SystemExit):
        os._exit(130)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


STOP_SECONDS = float(os.environ.get("DISTILL_LAB_WORKER_STOP_SECONDS", "60"))


def spawn_workers(ctx: StudyContext, workers: int) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_process, args=(ctx, threads_per_worker(workers), i + 1),
                                 name=f"distill-lab-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    return processes


def supervise(processes: list[multiprocessing.Process], study: optuna.Study, ctx: StudyContext, tracker: Tracker,
              refresh: Callable[[optuna.Study], None], poll: float = 1.0) -> int:
    """Wait for local workers; returns how many died. Whatever ends the wait, no worker outlives it.

    A worker that dies (kill -9, out of memory) leaves its trial RUNNING: as soon as it is seen
    gone, its trial is failed, its run ended FAILED and its grid point re-queued for the others.
    An interrupt of the coordinator (Ctrl-C, SIGTERM from docker stop / systemd) is forwarded as
    SIGTERM to every worker, which ends its trial's run KILLED and fails the trial; a worker still
    there after DISTILL_LAB_WORKER_STOP_SECONDS is killed and reconciled like a dead one.
    """
    seen: set[int] = set()
    died = 0
    try:
        while any(process.is_alive() for process in processes):  # is_alive() reaps an exited worker
            if interrupted():  # an interrupt whose KeyboardInterrupt Python swallowed
                raise KeyboardInterrupt("interrupted")
            refresh(study)
            exited = [p for p in processes if p.exitcode is not None and p.pid not in seen]
            if exited:
                seen.update(p.pid for p in exited)
                died += sum(p.exitcode != 0 for p in exited)
                reconcile(study, ctx, tracker)
            time.sleep(poll)
    except BaseException:
        stop_workers(processes)
        raise
    finally:
        for process in processes:
            process.join(timeout=STOP_SECONDS)
        reconcile(study, ctx, tracker)
        # A worker interrupted inside the run's creation leaves a RUNNING run its trial never recorded.
        end_orphan_runs(study, tracker, study.user_attrs["mlflow_experiment_id"])
    return died + sum(p.exitcode not in (0, None) for p in processes if p.pid not in seen)


def stop_workers(processes: list[multiprocessing.Process]) -> None:
    """SIGTERM to every live worker, then SIGKILL to any still there after STOP_SECONDS."""
    for process in processes:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("worker %s did not stop in %.0f s: killed", process.pid, STOP_SECONDS)
            process.kill()
            process.join(timeout=10)
