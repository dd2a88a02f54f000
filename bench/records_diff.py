"""Did a change alter what a study records? Compare the MLflow runs of one study in two stores.

    python -m bench.records_diff BEFORE AFTER [--experiment quickstart] [--json out.json]

BEFORE and AFTER are tracking URIs, or directories holding an `mlflow.db` (the default store of a
`distill-lab study run` started there). Runs are matched by role and trial number (the study's
parent run, each teacher run by its fingerprint, each trial run by `trial_number`); for every
matched pair the script compares the names and values of params, tags and metrics, every step of
every metric's history, and every logged artifact (by path and the sha256 of its bytes; YAML and
JSON files by their parsed content, so a change of key order alone is no difference).

Left out, because they differ between any two runs of the same code: run ids (the parent tag
`mlflow.parentRunId` is compared as the parent's key instead), timestamps, durations and speeds
(metrics whose name says seconds or per-second), MLflow's own source / user / git tags, and
artifact URIs. Floats are
compared exactly: a seeded study on the same machine and thread count must repeat to the bit.

Exit status 0 when the two stores record the same, 1 otherwise; names present on one side only are
listed apart from changed values, so a tag added on purpose is easy to tell from a changed value.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file otherwise
from mlflow.tracking import MlflowClient  # noqa: E402

# Metrics that measure the machine, not the model.
TIMING = re.compile(r"(seconds|per_second|wall|duration|elapsed)")
# MLflow's bookkeeping tags: who ran it, from which file and commit, and links by run id.
SYSTEM_TAGS = re.compile(r"^mlflow\.(user|source\.|git\.|log-model|project)")
PARENT_TAG = "mlflow.parentRunId"  # compared as the parent's key (e.g. `study`), not its id
KEYED_TAGS = {"trial": "trial_number", "teacher": "teacher_fingerprint"}


def tracking_uri(place: str) -> str:
    path = Path(place)
    if path.is_dir():
        return f"sqlite:///{(path / 'mlflow.db').resolve()}"
    return place


def run_key(run: Any) -> str:
    """A name for the run that the same study gives it in any store: role, plus trial number or fingerprint."""
    role = run.data.tags.get("role", "?")
    keyed = KEYED_TAGS.get(role)
    return f"{role}:{run.data.tags.get(keyed, '?')}" if keyed else role


def artifact_digests(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, str]:
    """{artifact path: sha256 of its bytes} for every file the run logged."""
    digests = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            digests.update(artifact_digests(client, run_id, item.path))
        else:
            with tempfile.TemporaryDirectory() as folder:
                local = Path(client.download_artifacts(run_id, item.path, folder))
                digests[item.path] = hashlib.sha256(_canonical(local)).hexdigest()
    return digests


def _canonical(path: Path) -> bytes:
    """A file's bytes; YAML and JSON files as their parsed content with sorted keys (key order aside)."""
    if path.suffix in (".yaml", ".yml", ".json"):
        content = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        return json.dumps(content, sort_keys=True).encode()
    return path.read_bytes()


def snapshot(uri: str, experiment: str) -> dict[str, dict[str, Any]]:
    """Every run of the experiment as {key: {params, tags, metrics (step -> value), artifacts, status}}."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"{uri}: no experiment {experiment!r}")
    runs = {}
    found_runs = client.search_runs([found.experiment_id], max_results=10_000)
    keys = {run.info.run_id: run_key(run) for run in found_runs}
    for run in found_runs:
        key = run_key(run)
        if key in runs:
            raise SystemExit(f"{uri}: two runs are {key}; this script compares single-run studies only")
        metrics = {}
        for name in run.data.metrics:
            if TIMING.search(name):
                continue
            history = client.get_metric_history(run.info.run_id, name)
            metrics[name] = {m.step: m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
        runs[key] = {
            "status": run.info.status,
            "params": dict(run.data.params),
            "tags": {k: keys.get(v, "a run of another experiment") if k == PARENT_TAG else v
                     for k, v in run.data.tags.items() if not SYSTEM_TAGS.match(k)},
            "metrics": metrics,
            "artifacts": artifact_digests(client, run.info.run_id),
        }
    return runs


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
            ignored_artifacts: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Per matched run: names only before / only after, and changed values; plus unmatched runs."""
    result: dict[str, Any] = {"only_before": sorted(set(before) - set(after)),
                              "only_after": sorted(set(after) - set(before)), "runs": {}, "counts": {}}
    counts = {"runs": 0, "params": 0, "tags": 0, "metrics": 0, "metric_points": 0, "artifacts": 0}
    for key in sorted(set(before) & set(after)):
        old, new = before[key], after[key]
        counts["runs"] += 1
        report: dict[str, Any] = {}
        if old["status"] != new["status"]:
            report["status"] = [old["status"], new["status"]]
        for kind in ("params", "tags", "metrics"):
            counts[kind] += len(set(old[kind]) & set(new[kind]))
            only_old = sorted(set(old[kind]) - set(new[kind]))
            only_new = sorted(set(new[kind]) - set(old[kind]))
            changed = {}
            for name in sorted(set(old[kind]) & set(new[kind])):
                if kind == "metrics":
                    counts["metric_points"] += len(new[kind][name])
                if old[kind][name] != new[kind][name]:
                    changed[name] = {"before": old[kind][name], "after": new[kind][name]}
            if only_old or only_new or changed:
                report[kind] = {"only_before": only_old, "only_after": only_new, "changed": changed}
        counts["artifacts"] += len(set(old["artifacts"]) & set(new["artifacts"]))
        if old["artifacts"] != new["artifacts"]:
            report["artifacts"] = {
                "only_before": sorted(set(old["artifacts"]) - set(new["artifacts"])),
                "only_after": sorted(set(new["artifacts"]) - set(old["artifacts"])),
                "changed": {name: {"before": old["artifacts"][name], "after": new["artifacts"][name]}
                            for name in sorted(set(old["artifacts"]) & set(new["artifacts"]))
                            if old["artifacts"][name] != new["artifacts"][name]
                            and Path(name).name not in ignored_artifacts}}
            if not any(report["artifacts"].values()):
                del report["artifacts"]
        if report:
            result["runs"][key] = report
    result["counts"] = counts
    return result


def same(result: dict[str, Any]) -> bool:
    return not (result["only_before"] or result["only_after"] or result["runs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="tracking URI, or a directory with mlflow.db")
    parser.add_argument("after", help="tracking URI, or a directory with mlflow.db")
    parser.add_argument("--experiment", default="quickstart", help="the study (MLflow experiment) name")
    parser.add_argument("--json", type=Path, help="also write the full comparison to this file")
    parser.add_argument("--ignore-artifact", action="append", default=[], metavar="NAME",
                        help="an artifact file name whose bytes may differ (a figure drawn another way); "
                             "it must still be there on both sides")
    args = parser.parse_args(argv)
    result = compare(snapshot(tracking_uri(args.before), args.experiment),
                     snapshot(tracking_uri(args.after), args.experiment), frozenset(args.ignore_artifact))
    if args.ignore_artifact:
        print(f"artifact contents not compared: {', '.join(args.ignore_artifact)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    counts = result["counts"]
    print(f"compared {counts['runs']} runs: {counts['params']} params, {counts['tags']} tags, "
          f"{counts['metrics']} metrics ({counts['metric_points']} logged points), {counts['artifacts']} artifacts")
    for side in ("only_before", "only_after"):
        if result[side]:
            print(f"runs {side.replace('_', ' ')}: {', '.join(result[side])}")
    for key, report in result["runs"].items():
        print(f"{key}:")
        if "status" in report:
            print(f"  status {report['status'][0]} -> {report['status'][1]}")
        for kind in ("params", "tags", "metrics", "artifacts"):
            if kind not in report:
                continue
            part = report[kind]
            for side in ("only_before", "only_after"):
                if part.get(side):
                    print(f"  {kind} {side.replace('_', ' ')}: {', '.join(part[side])}")
            for name, values in part.get("changed", {}).items():
                print(f"  {kind} {name}: {_short(values['before'])} -> {_short(values['after'])}")
    print("identical" if same(result) else "DIFFERENT")
    return 0 if same(result) else 1


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


if __name__ == "__main__":
    sys.exit(main())
