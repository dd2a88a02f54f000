"""Benchmark: `distill-lab report` over 2,000 tracked trial runs (target <= 5 s end to end).

    .venv/bin/python bench/report_bench.py [--runs 2000] [--repeat 3] [--keep DIR]

Logs fake but realistic trial runs (tests/fake_runs.py: parent, teacher and trial runs with per-seed
metrics, step histories and the flattened config as params) into a temporary sqlite MLflow store
(on /dev/shm when there is one: the setup is bound by sqlite commits), then times
`load_runs` + `experiment_table` + `render` end to end. The last line is the result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

TEMPERATURES = [1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32, 40, 48, 56, 64]
MAPPINGS = ["uniform", "last", "skip", "many_to_one"]
INITS = ["teacher", "pretrained"]


def setup(uri: str, runs: int) -> int:
    from mlflow.tracking import MlflowClient

    from fake_runs import log_fake_study

    client = MlflowClient(uri)
    per_study = len(TEMPERATURES) * len(MAPPINGS) * len(INITS)  # 200 trial runs per study
    logged, index = 0, 0
    while logged < runs:
        remaining = runs - logged
        temperatures = TEMPERATURES[:max(1, min(len(TEMPERATURES), remaining // (len(MAPPINGS) * len(INITS))))]
        if remaining < len(MAPPINGS) * len(INITS):
            study = log_fake_study(uri, f"bench_{index:02d}", temperatures=TEMPERATURES[:remaining],
                                   rng_seed=index, client=client)
        else:
            study = log_fake_study(uri, f"bench_{index:02d}", temperatures=temperatures, mappings=MAPPINGS,
                                   inits=INITS, mapping_effect={"last": -0.02}, init_effect={"pretrained": -0.01},
                                   rng_seed=index, client=client)
        logged += len(study.trial_run_ids)
        index += 1
        print(f"  {logged}/{runs} trial runs ({index} studies, {per_study} per full study)", flush=True)
    return logged


def report_once(uri: str) -> tuple[float, int, int]:
    from distill_lab import report_table as report
    from distill_lab import records as tracked

    start = time.perf_counter()
    runs = tracked.load_runs(uri)
    table = report.experiment_table(runs)
    text = report.render(table, "markdown")
    return time.perf_counter() - start, len(runs), len(text.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="trial runs to log (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (default 3)")
    parser.add_argument("--keep", type=Path, help="use/keep the store in DIR (reused when it has mlflow.db)")
    args = parser.parse_args()

    from fake_runs import new_store

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    directory = args.keep or Path(tempfile.mkdtemp(prefix="distill-lab-bench-", dir=base))
    try:
        if args.keep and (args.keep / "mlflow.db").is_file():
            uri = f"sqlite:///{args.keep / 'mlflow.db'}"
            print(f"reusing {uri}")
        else:
            start = time.perf_counter()
            uri = new_store(directory)
            logged = setup(uri, args.runs)
            print(f"setup: {logged} trial runs logged into {uri} in {time.perf_counter() - start:.1f} s")
        report_once(uri)  # warm-up: imports (mlflow, pandas, tabulate) are not the report's cost
        timings = []
        for repetition in range(args.repeat):
            seconds, rows, lines = report_once(uri)
            timings.append(seconds)
            print(f"  repetition {repetition + 1}: {seconds:.2f} s ({rows} runs read, {lines} table lines)")
        print(f"median of {args.repeat}: {statistics.median(timings):.2f} s")
        print(f"report over {args.runs} runs: {statistics.median(timings):.2f} s (target <= 5 s)")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
