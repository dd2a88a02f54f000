"""Run records: a study's MLflow runs exported through MLflow's API as small, diffable JSON.

One file per experiment (`<out>/<experiment>.json`): every run's id, name, status, parent, params,
tags, final metrics and the per-step history of its dev curves, sorted so that an export of the
same store is byte-identical. These files are committed; the MLflow store they came from is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from distill_lab.errors import DistillLabError
from distill_lab.tracking import PARENT_TAG

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


def export_experiment(name: str, tracking_uri: str, out_dir: Path) -> Path:
    """Write `<out_dir>/<name>.json` with every run of experiment `name`; returns the path."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise RecordsError(f"no MLflow experiment {name!r} in {tracking_uri} (known: {', '.join(known) or 'none'})")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    records = sorted((run_record(client, run) for run in runs),
                     key=lambda r: (r["parent_run_id"] or "", r["tags"].get("trial_number", ""), r["run_id"]))
    payload = {"format": FORMAT, "experiment": name, "runs": records}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a crash never leaves a half-written record behind
    return path


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
    """The exported runs as the frame a tracking store gives `report.load_runs`.

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
