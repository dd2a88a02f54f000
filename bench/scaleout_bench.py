"""Benchmark: N concurrent workers on one TPE study over PostgreSQL + a real MLflow server.

    .venv/bin/python bench/scaleout_bench.py [--workers 20] [--trials 40] [--local-workers 1]

Creates two throw-away databases on the local PostgreSQL (127.0.0.1:5432, trust auth), starts
`mlflow server` on a free loopback port with the PostgreSQL backend (pool and workers as in compose),
runs `study run` (with --local-workers spawned workers) plus N-local `study worker` processes
(tiny models, short trials), then checks: n finished trials, no connection errors in any log, no
MLflow run left RUNNING. While they run it samples, four times a second, the PostgreSQL
connections of every distill-lab process (its client sockets to the server) and of each database
(pg_stat_activity): the numbers an operator sizes max_connections with. Prints the wall time last.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
PG_PORT = 5432
CLI = [sys.executable, "-m", "distill_lab.cli"]


def admin(sql: str) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall() if cursor.description else []
    connection.close()
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pids: set[int]) -> set[int]:
    """`pids` and every live process below them (the coordinator's spawned workers included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(pids) & set(parents)
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def server_sockets() -> set[str]:
    """Socket inodes of this host's established TCP connections to the PostgreSQL port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == PG_PORT and fields[3] == "01":
                inodes.add(fields[9])
    return inodes


def held_by(pid: int, inodes: set[str]) -> int:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return 0
    return sum(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


def connected_span(counts: list[int]) -> list[int]:
    """A process's samples from its first connection to its last (not its imports, not its exit)."""
    held = [index for index, count in enumerate(counts) if count > 0]
    return counts[held[0]:held[-1] + 1] if held else []


class ConnectionSampler(threading.Thread):
    """Samples connections per distill-lab process (`roots` and their children) and per database until stopped."""

    def __init__(self, databases: dict[str, str], period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.databases, self.period = databases, period
        self.roots: set[int] = set()
        self.per_process: dict[int, list[int]] = {}
        self.per_database: dict[str, list[int]] = {key: [] for key in databases}
        self.done = threading.Event()

    def run(self) -> None:
        import psycopg2

        names = ", ".join(f"'{name}'" for name in self.databases.values())
        # One connection for every sample (on the `postgres` database, so it counts in neither).
        connection = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres")
        connection.autocommit = True  # a fresh pg_stat_activity at every sample (no `with connection`: a transaction)
        with connection.cursor() as cursor:
            while not self.done.wait(self.period):
                inodes = server_sockets()
                for pid in descendants(self.roots):
                    self.per_process.setdefault(pid, []).append(held_by(pid, inodes))
                cursor.execute(f"SELECT datname, count(*) FROM pg_stat_activity WHERE datname IN ({names}) "
                               "GROUP BY datname")
                counts = dict(cursor.fetchall())
                for key, name in self.databases.items():
                    self.per_database[key].append(counts.get(name, 0))
        connection.close()

    def peak_per_process(self) -> int:
        return max((max(counts) for counts in self.per_process.values()), default=0)

    def report(self) -> list[str]:
        def line(what: str, values: list[int]) -> str:
            return (f"{what}: peak {max(values, default=0)}, median {statistics.median(values or [0]):g}, "
                    f"mean {statistics.fmean(values or [0]):.2f} ({len(values)} samples)")

        holders = [counts for counts in self.per_process.values() if max(counts) > 0]
        steady = [count for counts in holders for count in connected_span(counts)]
        each = ", ".join(f"{statistics.median(connected_span(counts)):g}/{max(counts)}" for counts in holders)
        return [f"processes that held a connection: {len(holders)} of {len(self.per_process)} sampled "
                f"(each, median/peak: {each})",
                line("connections per such process, first connection to last", steady)] + [
            line(f"connections to the {key} database", values) for key, values in self.per_database.items()]


def tiny_spec(work: Path, trials: int) -> Path:
    spec = {
        "name": "scaleout",
        "data": {"source": "synthetic", "synthetic": {"n_train": 48, "n_dev": 16, "n_test": 16}, "max_length": 32,
                 "train_sample_size": 16},
        "teacher": {"model": "tiny-bert", "finetune": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16}},
        "student": {"from_teacher": {"num_layers": 2}},
        "training": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16, "eval_every": 3, "num_threads": 1},
        "study": {"n_trials": trials, "sampler": "tpe", "pruner": "none",
                  "search_space": {"distill.temperature": {"type": "float", "low": 1, "high": 16, "log": True},
                                   "distill.alpha_soft": {"type": "float", "low": 0.1, "high": 0.9}}},
        "tracking": {"log_artifacts": False},
    }
    path = work / "scaleout.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_of(storage: str):
    """The study through a storage that keeps no connection open (the bench's own reads count nowhere)."""
    import optuna
    from sqlalchemy.pool import NullPool

    return optuna.load_study(study_name="scaleout",
                             storage=optuna.storages.RDBStorage(storage, engine_kwargs={"poolclass": NullPool}))


def start_mlflow(work: Path, database: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`mlflow server` as docker-compose.yml runs it: 4 workers, each pool at most 2 + 3 connections."""
    port = free_port()
    env = dict(env, MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="2", MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="3")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{PG}/{database}",
                               "--artifacts-destination", str(work / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "4"],
                              stdout=open(work / "mlflow.log", "w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    tracking = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{tracking}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    return server, tracking


def start_study(args: argparse.Namespace, work: Path, env: dict[str, str], storage: str, tracking: str,
                sampler: ConnectionSampler) -> list[subprocess.Popen]:
    """`study run` (with its local workers), then the `study worker`s once the parent run exists."""
    spec_path = tiny_spec(work, args.trials)
    runner = subprocess.Popen(CLI + ["study", "run", str(spec_path), "--storage", storage, "--tracking-uri", tracking,
                                     "--workers", str(args.local_workers)], cwd=work, env=env,
                              stdout=open(work / "run.log", "w"), stderr=subprocess.STDOUT)
    sampler.roots.add(runner.pid)
    sampler.start()
    while True:  # workers join once the study and its parent run exist
        try:
            if "mlflow_parent_run_id" in study_of(storage).user_attrs:
                break
        except KeyError:
            pass
        time.sleep(0.5)
    workers = [subprocess.Popen(CLI + ["study", "worker", str(spec_path), "--storage", storage], cwd=work, env=env,
                                stdout=open(work / f"worker{index}.log", "w"), stderr=subprocess.STDOUT)
               for index in range(args.workers - args.local_workers)]
    sampler.roots.update(worker.pid for worker in workers)
    return [runner, *workers]


def check(work: Path, storage: str, tracking: str) -> tuple[dict[str, int], list[str], int]:
    from mlflow.tracking import MlflowClient

    states: dict[str, int] = {}
    for trial in study_of(storage).get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    logs = "\n".join(path.read_text() for path in work.glob("*.log"))
    errors = [line for line in logs.splitlines()
              if "OperationalError" in line or "too many clients" in line or "connection" in line.lower()
              and "error" in line.lower()]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("scaleout")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return states, errors, len(running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=20, help="worker processes in all")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--local-workers", type=int, default=1, help="workers `study run --workers` spawns")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="distill-lab-scaleout-"))
    suffix = uuid.uuid4().hex[:8]
    databases = {"optuna": f"bench_optuna_{suffix}", "mlflow": f"bench_mlflow_{suffix}"}
    for name in databases.values():
        admin(f"CREATE DATABASE {name}")
    env = dict(os.environ, DISTILL_LAB_HOME=str(work / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server, tracking = start_mlflow(work, databases["mlflow"], env)
    storage = f"{PG}/{databases['optuna']}"
    sampler = ConnectionSampler(databases)
    processes: list[subprocess.Popen] = []
    try:
        started = time.perf_counter()
        processes = start_study(args, work, env, storage, tracking, sampler)
        codes = [process.wait(timeout=3600) for process in processes]
        wall = time.perf_counter() - started
        sampler.done.set()
        states, errors, running = check(work, storage, tracking)
        finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        print(f"exit codes: {sorted(set(codes))}; trial states: {states}")
        print(f"connection errors in logs: {len(errors)}; MLflow runs left RUNNING: {running}")
        for line in errors[:5]:
            print("  ", line[:200])
        print("\n".join(sampler.report()))
        print(f"{args.workers} workers, {args.trials}-trial TPE study over PostgreSQL: {finished} finished trials "
              f"in {wall:.1f} s wall")
    finally:
        sampler.done.set()
        for process in processes:
            if process.poll() is None:
                process.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        for name in databases.values():
            admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            admin(f"DROP DATABASE IF EXISTS {name}")


if __name__ == "__main__":
    main()
