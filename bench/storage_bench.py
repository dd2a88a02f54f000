"""Benchmark: what one Optuna storage call costs under each connection-pool choice (PostgreSQL).

    .venv/bin/python bench/storage_bench.py [--calls 300]

A throw-away database on the local PostgreSQL (127.0.0.1:5432, trust auth, loopback: connection
set-up is as cheap here as it ever gets; over a network with password auth it costs more). For each
pool choice: one RDBStorage, one study, one running trial; then `--calls` sequential calls each of
`get_trial` (a read), `record_heartbeat` and `set_trial_user_attr` (writes), timed one by one, first
alone and then with a second thread recording a heartbeat every 50 ms (a worker's heartbeat
thread, 200x its default rate) to show what sharing one connection costs. Prints median and 99th
percentile per call; bench/scaleout_bench.py counts the connections real workers hold.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any, Callable

import optuna
from sqlalchemy.pool import NullPool

from bench.scaleout_bench import PG, admin

POOLS: dict[str, dict[str, Any]] = {
    "pool 1 + overflow 2 (before)": {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 2, "pool_recycle": 300},
    "pool 1 + overflow 1": {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1, "pool_recycle": 300},
    "NullPool (a connection per call)": {"poolclass": NullPool},
}


def timed(call: Callable[[], object], calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(label: str, engine_kwargs: dict[str, Any], url: str, calls: int) -> list[str]:
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    study = optuna.create_study(storage=storage, study_name=f"pool-{uuid.uuid4().hex[:6]}")
    trial_id = study.ask()._trial_id
    operations = {"get_trial": lambda: storage.get_trial(trial_id),
                  "record_heartbeat": lambda: storage.record_heartbeat(trial_id),
                  "set_trial_user_attr": lambda: storage.set_trial_user_attr(trial_id, "k", "v")}
    lines = []
    for beating in (False, True):
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(0.05):
                storage.record_heartbeat(trial_id)

        thread = threading.Thread(target=beat, daemon=True)
        if beating:
            thread.start()
        for name, call in operations.items():
            seconds = sorted(timed(call, calls))
            median, p99 = statistics.median(seconds) * 1000, seconds[int(len(seconds) * 0.99)] * 1000
            lines.append(f"| {label} | {name}{' + heartbeat thread' if beating else ''} | {median:.2f} ms | "
                         f"{p99:.2f} ms |")
        stop.set()
        if beating:
            thread.join()
    storage.engine.dispose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    database = f"bench_pool_{uuid.uuid4().hex[:8]}"
    admin(f"CREATE DATABASE {database}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        print("| pool | call | median | p99 |\n|---|---|---|---|")
        for label, engine_kwargs in POOLS.items():
            print("\n".join(measure(label, engine_kwargs, f"{PG}/{database}", args.calls)))
    finally:
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        admin(f"DROP DATABASE IF EXISTS {database}")


if __name__ == "__main__":
    main()
