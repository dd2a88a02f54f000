"""MLflow adapter with explicit run ids: one parent run per study, nested trial runs, artifacts.

Uses MlflowClient only (never the fluent API, which silently starts runs). A run is ended
FINISHED, FAILED (exception) or KILLED (interrupt) by the context manager, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from distill_lab.errors import DistillLabError
from distill_lab.masking import check_tracking_credentials, mask_url, scrub
from distill_lab.signals import deferred_interrupts

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000


def default_tracking_uri(explicit: str | None = None, spec_uri: str | None = None) -> str:
    """--tracking-uri, then the spec, then MLFLOW_TRACKING_URI, then MLflow 3's default local store."""
    uri = explicit or spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    check_tracking_credentials(uri)
    return uri


class TrackingError(DistillLabError):
    """The tracking server or store cannot be reached or used."""


def _client(uri: str) -> Any:
    # MLflow's async-logging thread polls its queue with a 1 s timeout, so ending a run (which shuts
    # that thread down) waited up to 1 s per trial. With a buffering window the thread sleeps on an
    # event instead, wakes at once when the run ends, and merges the step metrics it buffered.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    try:
        return mlflow_client(uri)
    except Exception as err:  # noqa: BLE001 - e.g. an unknown URI scheme: one line, not MLflow's traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"tracking URI {mask_url(uri)!r}: {scrub(first, uri)[:300]}") from None


def mlflow_client(uri: str) -> MlflowClient:
    """An MlflowClient on `uri`; a local SQLite store is opened under a lock held across processes.

    Opening a store that has no tables yet creates them and runs MLflow's migrations (its
    SqlAlchemyStore does so without a lock), so two processes opening one new `sqlite:` store at
    once race in those migrations and one fails ("Online migration expected to match one row ...";
    two `study run`s started together on a fresh directory). The first opener now builds it while
    the others wait; the store is cached per process, so the lock is taken once.
    """
    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri)
    key = hashlib.sha256(_sqlite_key(uri).encode()).hexdigest()[:16]
    # In the system temp directory, writable by every user who can write the database itself.
    with FileLock(os.path.join(tempfile.gettempdir(), f"distill-lab-mlflow-{key}.lock"), mode=0o666):
        return MlflowClient(tracking_uri=uri)


def _sqlite_key(uri: str) -> str:
    """The database file a `sqlite:` URI names, absolute, so `sqlite:///mlflow.db` run from a
    directory and `sqlite:////that/directory/mlflow.db` share one lock."""
    path = uri.split("sqlite:///", 1)[-1].split("?", 1)[0]
    return str(Path(path).resolve()) if path and path != ":memory:" else uri


def _retrying(call: Callable[[], Any], attempts: int, *, pause: float) -> Any:
    """`call()`, tried again after pause, 2 x pause, ... when the store fails (busy, or a row another
    process inserted a moment before); the last failure is raised."""
    for attempt in range(attempts - 1):
        try:
            return call()
        except Exception:  # noqa: BLE001 - any store error: try again
            time.sleep(pause * (attempt + 1))
    return call()


@dataclass
class RunHandle:
    """A live MLflow run: params, step metrics (async), tags, artifacts."""

    client: Any
    run_id: str
    _pending: list[Any] = field(default_factory=list)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key[:250], _param_value(value)) for key, value in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, synchronous: bool = True) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items() if _finite(value)]
        if not items:
            return
        # Step metrics go off the hot path: the training loop does not wait for the store.
        operation = self.client.log_batch(self.run_id, metrics=items, synchronous=synchronous)
        if operation is not None and not synchronous:
            self._pending.append(operation)

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), 100):  # one request (one store commit) per 100 tags, not one per tag
            self.client.log_batch(self.run_id, tags=items[start:start + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def flush(self) -> None:
        for operation in self._pending:
            with contextlib.suppress(Exception):
                operation.wait()
        self._pending.clear()


def _finite(value: Any) -> bool:
    try:
        return value == value and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_LENGTH]


def check_tracking_store(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer before a study writes anything (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return  # a local store (sqlite, file) is created on first use
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth app may refuse the probe): reachable
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"tracking server {mask_url(uri)} does not answer ({scrub(str(reason), uri)[:200]}); "
                            "start it, or pass --tracking-uri / MLFLOW_TRACKING_URI") from None


class Tracker:
    """One tracking store (local sqlite/file or a server)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = _client(uri)

    def ensure_experiment(self, name: str) -> str:
        try:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment.experiment_id)
                return experiment.experiment_id
            return self.client.create_experiment(name)
        except Exception as err:  # noqa: BLE001 - any store failure becomes one clear line
            if "RESOURCE_ALREADY_EXISTS" in str(err) or "already exists" in str(err):
                return self.client.get_experiment_by_name(name).experiment_id
            raise TrackingError(f"tracking store {self.uri}: {str(err).splitlines()[0]}") from err

    def tag_experiment(self, experiment_id: str, tags: dict[str, str], attempts: int = 3) -> None:
        """Set the experiment's tags; a tag another process set at the same moment is set again.

        MLflow sets a tag by looking it up and inserting it when absent, so two `study run`s tagging
        one new experiment at once can both insert and one fails ("UNIQUE constraint failed:
        experiment_tags..."); the second try finds the row and updates it.
        """
        for key, value in tags.items():
            try:
                _retrying(lambda: self.client.set_experiment_tag(experiment_id, key, value), attempts, pause=0.2)
            except Exception as err:  # noqa: BLE001 - any store error, after the retries: one clear line
                raise TrackingError(f"tracking store {mask_url(self.uri)}: cannot tag experiment {experiment_id} "
                                    f"with {key!r}: {str(err).splitlines()[0][:300]}") from err

    def create_run(self, experiment_id: str, name: str, tags: dict[str, Any] | None = None,
                   parent_run_id: str | None = None) -> str:
        all_tags = {key: str(value) for key, value in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str, *, keep_async_logging: bool = False) -> None:
        """`keep_async_logging`: end it without stopping MLflow's async-logging queue, which the
        process shares with its other runs (`set_terminated` shuts it down, and a run still
        logging on another thread then fails with "cannot schedule new futures after shutdown")."""
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if keep_async_logging and store is not None:
            store.update_run_info(run_id, run_status=RunStatus.from_string(status),
                                  end_time=int(time.time() * 1000), run_name=None)
            return
        self.client.set_terminated(run_id, status=status)

    def _end_run_retrying(self, run_id: str, status: str, attempts: int = 3, *, keep_async_logging: bool = False) -> None:
        """End a run even when the store is busy for a moment (an SQLite store locked by the other
        workers, all ending their runs at one Ctrl-C); a run it cannot end is said, not hidden."""
        try:
            _retrying(lambda: self.end_run(run_id, status, keep_async_logging=keep_async_logging), attempts, pause=0.5)
        except Exception as err:  # noqa: BLE001 - any store error, after the retries: said, not raised
            log.warning("could not end MLflow run %s as %s: %r", run_id, status, err)

    @contextlib.contextmanager
    def run(self, experiment_id: str, name: str, *, tags: dict[str, Any] | None = None,
            parent_run_id: str | None = None, run_id: str | None = None,
            finished_on: tuple[type[BaseException], ...] = (), keep_open: bool = False) -> Iterator[RunHandle]:
        """A run that always ends: FINISHED, FAILED on an exception, KILLED on interrupt/SIGTERM.

        `finished_on`: exceptions that end it FINISHED all the same (a study's pruned trial).
        `keep_open`: a body that ends normally leaves the run RUNNING for the caller to end with
        `close` (a trial's artifacts are written after Optuna is told); an exception still ends it.
        """
        run_id = run_id or self.create_run(experiment_id, name, tags, parent_run_id)
        handle = RunHandle(self.client, run_id)
        status, completed = "FINISHED", False
        try:
            yield handle
            completed = True
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        except BaseException as err:
            if not isinstance(err, finished_on):
                status = "FAILED"
                with contextlib.suppress(Exception):
                    self.client.set_tag(run_id, "error", repr(err)[:5000])
            raise
        finally:
            if not (completed and keep_open):
                self.close(handle, status)

    def close(self, handle: RunHandle, status: str = "FINISHED", *, others_logging: bool = False) -> None:
        """End a run, even through a Ctrl-C / SIGTERM that lands while it is being closed (waiting
        for queued metrics, the terminate request): it is closed first, the interrupt comes after.

        `others_logging`: another run of this process may be logging meanwhile (a trial closed on
        the background writer): wait for this run's own queued metrics, leave MLflow's queue up.
        """
        with deferred_interrupts() as interrupted:
            if others_logging:
                handle.flush()
                self._end_run_retrying(handle.run_id, status, keep_async_logging=True)
            else:
                # Ending the run drains MLflow's async queue first; the flush then only surfaces
                # what is left (older MLflow versions end runs without draining).
                self._end_run_retrying(handle.run_id, status)
                handle.flush()
            if interrupted:  # the close itself was interrupted: the work it closed is abandoned
                with contextlib.suppress(Exception):
                    self.end_run(handle.run_id, "KILLED")

    def runs_in_state(self, experiment_id: str, state: str = "RUNNING") -> list[Any]:
        return self.client.search_runs([experiment_id], filter_string=f"attributes.status = '{state}'",
                                       max_results=1000)

    def find_runs(self, experiment_id: str, tags: dict[str, str], max_results: int = 1000) -> list[Any]:
        """The active runs of the experiment carrying every one of `tags`."""
        query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
        return self.client.search_runs([experiment_id], filter_string=query, max_results=max_results)

    def find_run(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        runs = self.find_runs(experiment_id, tags, max_results=1)
        return runs[0].info.run_id if runs else None


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI pointed at `uri` meanwhile, for the fluent-only APIs (search_runs,
    the model flavors' log_model, register_model); the previous URI and environment come back after."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    environment = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri also (un)sets this variable
    try:
        mlflow.set_tracking_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment


@contextlib.contextmanager
def temporary_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="distill-lab-") as directory:
        yield Path(directory)
