"""Where a study lives: Optuna storage URLs (journal file or RDB), the study's spec and digest.

One machine: a JournalStorage file under .distill_lab/ (safe for several local worker processes).
Many machines: Optuna RDB storage (PostgreSQL), whose heartbeat lets Optuna re-queue the trials of
dead workers. Every URL is shown, stored and raised with its password masked.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from distill_lab import search_space
from distill_lab.errors import DistillLabError, SpecError
from distill_lab.masking import mask_url, scrub
from distill_lab.paths import home_dir
from distill_lab.spec import StudySpec, parse_spec
from distill_lab.study import optuna_compat

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# Heartbeat of RDB storages: a worker silent for GRACE seconds is dead and its trial re-queued.
HEARTBEAT_INTERVAL = int(os.environ.get("DISTILL_LAB_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("DISTILL_LAB_GRACE_PERIOD", "40"))
# One storage per process and one pooled connection per storage: many workers share one PostgreSQL
# server (max_connections defaults to 100). The overflow connection exists only while two calls
# overlap and is closed when returned: the heartbeat thread beside a trial's own call, and every
# RDBStorage's start, whose schema check opens a second connection inside the first (without an
# overflow it waits for itself until the pool times out). A connection per call (NullPool) costs
# ~4x per call. Measured in docs/benchmarks.md ("PostgreSQL connections").
POOL: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1, "pool_recycle": 300}


@dataclass(frozen=True)
class StudyContext:
    """What every worker of one study needs (pickled to spawned workers; changed with `replace`)."""

    spec: StudySpec
    storage_url: str
    tracking_uri: str
    n_trials: int
    n_teacher: int
    n_student: int
    save_best: bool = False  # at the end: the final best trial's student logged as an MLflow Model
    timeout: float | None = None
    register: str | None = None  # with save_best: the model registry name it is registered under

    @property
    def seeds(self) -> list[int]:
        return self.spec.study.seeds or [self.spec.training.seed]


def default_storage() -> str:
    return str(home_dir() / "optuna.journal")


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith((".journal", ".log"))


def open_storage(url: str, *, workers: int = 1, tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """Optuna storage from a URL or journal file path (never the MLflow database)."""
    if tracking_uri and same_database(url, tracking_uri):
        raise SpecError(
            f"--storage {mask_url(url)} is the MLflow tracking database: Optuna and MLflow both keep an alembic_version "
            "table and must not share one database; use another database or the default journal file"
        )
    if is_journal(url):
        return _journal(Path(url.removeprefix("journal:").removeprefix("//")))
    if url.startswith("sqlite") and workers > 1:
        raise SpecError(
            f"--storage {mask_url(url)}: SQLite cannot serve {workers} concurrent workers well (\"database is locked\"); "
            "omit --storage to use the journal file under .distill_lab/, or use PostgreSQL "
            "(--storage postgresql+psycopg2://user@host/db)"
        )
    kwargs: dict[str, Any] = {}
    engine_kwargs: dict[str, Any] = {}
    try:
        # Heartbeats are "experimental" to Optuna since v2.8; its warnings would precede every line we print.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if not url.startswith("sqlite"):
                kwargs = _heartbeat_kwargs()
                engine_kwargs = dict(POOL)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as err:  # noqa: BLE001 - connection/driver errors become one line
        raise DistillLabError(f"--storage {mask_url(url)}: cannot open Optuna storage: "
                              f"{scrub(str(err).splitlines()[0], url)}") from None


def _journal(path: Path) -> optuna.storages.JournalStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(f"--storage {path}: cannot create its directory {path.parent} "
                        f"({err.strerror or type(err).__name__})") from None
    backend = optuna.storages.journal.JournalFileBackend(
        str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend)


def _heartbeat_kwargs() -> dict[str, Any]:
    """Dead workers are detected by heartbeat and their trials re-queued by Optuna itself."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    # Optuna >= 4.9 names the hook heartbeat_stale_trial_callback (failed_trial_callback is deprecated).
    hook = ("heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
            else "failed_trial_callback")
    return {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD, hook: retry}


def same_database(storage_url: str, tracking_uri: str) -> bool:
    """Whether two URLs name one database (driver suffixes, passwords and sqlite path spellings aside)."""
    def key(url: str) -> tuple[Any, ...] | str:
        try:
            parsed = make_url(url)
        except ArgumentError:
            return url.rstrip("/")  # not a database URL (a journal path, an http tracking server)
        database = parsed.database or ""
        if parsed.get_backend_name() == "sqlite" and database:
            database = str(Path(database).resolve())
        return parsed.get_backend_name(), parsed.host, parsed.port, database

    return key(storage_url) == key(tracking_uri)


def spec_digest(spec: StudySpec) -> str:
    """What must not change between a study and its resumption (n_trials may).

    Values equal to their defaults are left out, so a later version that adds a setting (with a
    default) still resumes the studies an earlier one created, and writing a default out changes nothing.
    """
    payload = spec.model_dump(mode="json", exclude_defaults=True,
                              exclude={"description": True, "tracking": True, "study": {"n_trials", "timeout"}})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def create_or_load(ctx: StudyContext, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The study of `ctx.spec`, created with its spec and digest, or resumed if the digest agrees."""
    spec = ctx.spec
    study = optuna.create_study(
        study_name=spec.name, storage=storage, direction=spec.study.direction, load_if_exists=True,
        sampler=search_space.sampler_for(spec), pruner=search_space.pruner_for(spec))
    attrs = study.user_attrs
    digest = spec_digest(spec)
    changed = "spec_digest" in attrs and attrs["spec_digest"] != digest
    if changed and study.get_trials(deepcopy=False, states=FINISHED_STATES):
        raise SpecError(
            f"study {spec.name!r} already exists in {mask_url(ctx.storage_url)} with a different spec; "
            f"give this one a new name (--set name=...) or use another --storage"
        )
    # A study none of whose trials finished (e.g. a first start that failed on its data) takes the
    # corrected spec: nothing measured under the old one is mixed with the new.
    if changed:
        for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):  # the old spec's queue
            optuna_compat.fail_trial(study, waiting, "the study's spec changed before this trial ran")
    if "spec_digest" not in attrs or changed:
        study.set_user_attr("spec", spec.written())  # as written: ${VAR} secrets stay in the environment
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
    """The study's spec, its `${VAR}` references expanded from this process's environment."""
    return parse_spec(study.user_attrs["spec"], source=f"study {study.study_name!r}'s stored spec")


def owner_name() -> str:
    """`host:pid` of this process: recorded on each trial it runs (user attr `worker`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """False only for a local process that is gone; another host's heartbeat (RDB storage) decides."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
