"""Run records: tracked runs read back as one DataFrame, and exported as small, diffable JSON.

Reading (`load_runs`, `load_records`): the frame `mlflow.search_runs` gives (run_id, experiment_id,
status, start_time, tags.*, params.*, metrics.* with the latest value of each metric), from an
MLflow store or from committed exports, the same columns either way. A database store is read with
three plain queries (`read_database`; MLflow's ORM takes ~10 s for 2,000 runs), pinned by a test to
the API's frame (`search_runs_api`), which serves every other store.

Exporting (`export_experiment`): one file per experiment (`<out>/<experiment>.json`): every run's
id, name, status, parent, params, tags, final metrics and the per-step history of its dev curves,
sorted so that an export of the same store is byte-identical. These files are committed; the MLflow
store they came from is not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import mlflow
import pandas as pd
import sqlalchemy
from mlflow.tracking import MlflowClient

from distill_lab.errors import DistillLabError
from distill_lab.record_schema import ROLE, ROLES, TEACHER, TEACHER_FINGERPRINT, tag
from distill_lab.tracking import PARENT_TAG, mlflow_client, using_tracking_uri

FORMAT = 1
# Per-step curves kept in the export (a run logs them once per seed, prefixed seed<N>_ after the first).
HISTORY_SUFFIXES = ("dev_f1", "loss_total", "learning_rate")


class RecordsError(DistillLabError):
    """The runs cannot be exported (unknown experiment, unreadable store)."""


def _history(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> dict[str, list[list[float]]]:
    curves = {}
    for key in sorted(metrics):
        if key.endswith(HISTORY_SUFFIXES) and not key.startswith(("best_", "teacher_")):
            points = client.get_metric_history(run_id, key)
            curves[key] = sorted([int(p.step), round(float(p.value), 6)] for p in points)
    return curves


def run_record(client: MlflowClient, run: Any) -> dict[str, Any]:
    tags = {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.")}
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": str(run.info.experiment_id),
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "parent_run_id": run.data.tags.get(PARENT_TAG),
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(tags.items())),
        "metrics": {key: round(float(value), 6) for key, value in sorted(run.data.metrics.items())},
        "history": _history(client, run.info.run_id, run.data.metrics),
    }


def export_experiment(name: str, tracking_uri: str, out_dir: Path, *, merge: bool = False) -> Path:
    """Write `<out_dir>/<name>.json` with every run of experiment `name`; returns the path.

    `merge`: keep the runs the file already holds that this store lacks (runs of the same study
    made on another machine, e.g. more seeds of a reference recipe); see `merge_records`.
    """
    client = mlflow_client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise RecordsError(f"no MLflow experiment {name!r} in {tracking_uri} (known: {', '.join(known) or 'none'})")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    records = [run_record(client, run) for run in runs]
    path = out_dir / f"{name}.json"
    if merge and path.exists():
        records = merge_records(load(path)["runs"], records)
    records.sort(key=lambda r: (r["parent_run_id"] or "", r["tags"].get("trial_number", ""), r["run_id"]))
    payload = {"format": FORMAT, "experiment": name, "runs": records}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a crash never leaves a half-written record behind
    return path


def merge_records(kept: list[dict[str, Any]], exported: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The union of two record lists by run id (the store's version of a run wins).

    A teacher is fine-tuned once per fingerprint and the fine-tune is deterministic, so a second
    teacher run of the same fingerprint (the other machine fine-tuned or reused the same model)
    would count one model twice: the earliest teacher run of each fingerprint is kept.
    """
    runs = {record["run_id"]: record for record in kept}
    runs.update({record["run_id"]: record for record in exported})
    teachers: dict[str, dict[str, Any]] = {}
    for record in sorted(runs.values(), key=lambda r: (r["start_time"] or 0, r["run_id"])):
        fingerprint = record["tags"].get(TEACHER_FINGERPRINT)
        if record["tags"].get(ROLE) == TEACHER and fingerprint:
            if fingerprint in teachers:
                del runs[record["run_id"]]
            else:
                teachers[fingerprint] = record
    return list(runs.values())


def load(path: Path) -> dict[str, Any]:
    """Read an export back (checks its format)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RecordsError(f"{path}: not a readable run-record export ({err.__class__.__name__})") from None
    if payload.get("format") != FORMAT:
        raise RecordsError(f"{path}: run-record format {payload.get('format')!r}, expected {FORMAT}")
    return payload


def export_paths(path: Path) -> list[Path]:
    """The export files under `path`: the file itself, or every `*.json` of a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise RecordsError(f"{path}: no run-record exports (*.json) in this directory")
        return files
    if not path.is_file():
        raise RecordsError(f"{path}: no such run-record export (a .json file or a directory of them)")
    return [path]


def runs_frame(paths: Sequence[Path]) -> pd.DataFrame:
    """The exported runs as the frame a tracking store gives `load_runs`.

    Columns run_id, experiment_id, status, start_time, end_time, tags.*, params.*, metrics.*
    (the last value of each metric), so the report reads an export exactly as it reads the store
    it came from. Exports made before start/end times were recorded leave those columns empty.
    """
    rows = []
    for path in paths:
        payload = load(path)
        for record in payload["runs"]:
            row: dict[str, Any] = {
                "run_id": record["run_id"],
                "experiment_id": record.get("experiment_id", payload["experiment"]),
                "status": record["status"],
                "start_time": record.get("start_time"),
                "end_time": record.get("end_time"),
            }
            row.update({f"tags.{key}": value for key, value in record["tags"].items()})
            if record.get("parent_run_id"):
                row[f"tags.{PARENT_TAG}"] = record["parent_run_id"]
            row.update({f"params.{key}": value for key, value in record["params"].items()})
            row.update({f"metrics.{key}": float(value) for key, value in record["metrics"].items()})
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(pd.to_numeric(frame[column], errors="coerce"), unit="ms", utc=True)
    return frame.sort_values(["start_time", "run_id"], ascending=[False, True], na_position="last").reset_index(drop=True)


# --------------------------------------------------------------------------- reading
class ReportError(DistillLabError):
    """Nothing to report, or the output cannot be written."""


class UnknownStudyError(ReportError):
    """A study named on the command line or in a report region has no runs in the store."""


# reference: runs of a peer's recipe logged beside the studies (bench/textbrewer_bench.py recipe),
# one run per seed, shown and compared like a study's trials.
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def load_runs(tracking_uri: str, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """Trial and teacher runs of the named studies (all studies when none) as one DataFrame.

    Columns as `mlflow.search_runs` gives them: run_id, experiment_id, status, start_time,
    tags.*, params.*, metrics.* (latest value of each metric). A database store is read with
    three plain queries (MLflow's ORM takes ~10 s for 2,000 runs); other stores via the MLflow API.
    """
    missing = _missing_sqlite_file(tracking_uri)
    if missing is not None:  # MLflow would silently create (and migrate) an empty database there
        raise ReportError(f"tracking store {tracking_uri}: no database file {missing} (run a study first, "
                          f"or pass --tracking-uri)")
    runs = read_database(tracking_uri)
    if runs is None:
        runs = search_runs_api(tracking_uri)
    return _select(runs, studies, f"tracking store {tracking_uri}")


def load_records(path: Path, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """The same frame as `load_runs`, read from committed run records (`distill-lab records export`)."""
    try:
        runs = runs_frame(export_paths(path))
    except RecordsError as err:
        raise ReportError(str(err)) from None
    if not runs.empty and tag(ROLE) in runs:
        runs = runs[runs[tag(ROLE)].isin(ROLES)]
    return _select(runs, studies, f"run records {path}")


def _select(runs: pd.DataFrame, studies: Sequence[str] | None, where: str) -> pd.DataFrame:
    if runs.empty or "tags.study" not in runs:
        raise ReportError(f"{where} has no distill-lab runs: run a study first")
    known = sorted(runs["tags.study"].dropna().unique())
    if studies:
        unknown = sorted(set(studies) - set(known))
        if unknown:
            raise UnknownStudyError(f"no study named {', '.join(unknown)} in {where}; studies there: "
                                    f"{', '.join(known) or 'none'}")
        runs = runs[runs["tags.study"].isin(studies)]
    return runs.reset_index(drop=True)


def _missing_sqlite_file(tracking_uri: str) -> str | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:") or Path(path).exists():
        return None
    return path


def search_runs_api(tracking_uri: str) -> pd.DataFrame:
    """The runs with a distill-lab role through the MLflow API (any store: server, file, database)."""
    client = mlflow_client(tracking_uri)
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
    except Exception as err:  # noqa: BLE001 - an unreachable store is a user problem
        raise ReportError(f"tracking store {tracking_uri}: {str(err).splitlines()[0]}") from err
    if not experiments:
        raise ReportError(f"tracking store {tracking_uri} has no experiments: run a study first")
    frames = []
    # mlflow.search_runs has no uri argument: point the global at the store only meanwhile.
    with using_tracking_uri(tracking_uri):
        for role in ROLES:
            frame = mlflow.search_runs(experiment_ids=experiments, filter_string=f"tags.{ROLE} = '{role}'",
                                       output_format="pandas", max_results=200_000)
            if not frame.empty:
                frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_database(tracking_uri: str) -> pd.DataFrame | None:
    """The same frame as `_search_runs_api`, read straight from MLflow's tables; None: use the API.

    MLflow's schema for runs, tags, params and latest_metrics has been stable since MLflow 1.x; any
    surprise (another backend, a workspace-scoped store, a missing table) falls back to the API.
    """
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in SQL_SCHEMES or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        return None
    roles = ", ".join(f"'{role}'" for role in ROLES)
    selected = (
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        f"JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = '{ROLE}' AND t.value IN ({roles}) "
        "WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'")
    try:
        engine = sqlalchemy.create_engine(tracking_uri)
    except Exception:  # noqa: BLE001 - e.g. a driver missing: the API knows better
        return None
    try:
        with engine.connect() as connection:
            read = lambda query: pd.read_sql_query(sqlalchemy.text(query), connection)  # noqa: E731
            info = read("SELECT r.run_uuid AS run_id, r.experiment_id, r.status, r.start_time, r.end_time, "
                        f"r.artifact_uri FROM runs r WHERE r.run_uuid IN ({selected})")
            tags = read(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})")
            params = read(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})")
            metrics = read(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({selected})")
    except Exception:  # noqa: BLE001 - unexpected schema or store: let the API read (or report) it
        return None
    finally:
        engine.dispose()
    if info.empty:
        return pd.DataFrame()
    metrics["value"] = pd.to_numeric(metrics["value"], errors="coerce").astype(float)
    metrics.loc[metrics["is_nan"].astype(bool), "value"] = float("nan")
    frame = info.assign(experiment_id=info["experiment_id"].astype(str))
    for time_column in ("start_time", "end_time"):
        frame[time_column] = pd.to_datetime(frame[time_column], unit="ms", utc=True)
    wide = [frame.set_index("run_id")]
    for prefix, values in (("metrics", metrics), ("params", params), ("tags", tags)):
        if not values.empty:
            table = values.drop_duplicates(["run_uuid", "key"], keep="last").pivot(
                index="run_uuid", columns="key", values="value")
            table.columns = [f"{prefix}.{key}" for key in table.columns]
            wide.append(table.astype(float) if prefix == "metrics" else table.infer_objects())
    runs = pd.concat(wide, axis=1, join="outer")
    runs = runs[runs.index.isin(info["run_id"])]
    runs = runs.rename_axis("run_id").reset_index()
    return runs.sort_values(["start_time", "run_id"], ascending=[False, True]).reset_index(drop=True)
