"""Benchmark: N concurrent workers on one TPE study over PostgreSQL + a real MLflow server.

    .venv/bin/python bench/scaleout_bench.py [--workers 20] [--trials 40]

Creates two throw-away databases on the local PostgreSQL (127.0.0.1:5432, trust auth), starts
`mlflow server` on a free loopback port with the PostgreSQL backend, runs `study run` plus
N-1 `study worker` processes (tiny models, short trials), then checks: n finished trials, no
connection errors in any log, no MLflow run left RUNNING. Prints the wall time last.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
CLI = [sys.executable, "-m", "distill_lab.cli"]


def admin(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="distill-lab-scaleout-"))
    suffix = uuid.uuid4().hex[:8]
    databases = {"optuna": f"bench_optuna_{suffix}", "mlflow": f"bench_mlflow_{suffix}"}
    for name in databases.values():
        admin(f"CREATE DATABASE {name}")
    env = dict(os.environ, DISTILL_LAB_HOME=str(work / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="4",
               MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="8")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"{PG}/{databases['mlflow']}", "--artifacts-destination", str(work / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                              stdout=open(work / "mlflow.log", "w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    tracking = f"http://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{tracking}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        spec = {
            "name": "scaleout",
            "data": {"source": "synthetic", "synthetic": {"n_train": 48, "n_dev": 16, "n_test": 16}, "max_length": 32,
                     "train_sample_size": 16},
            "teacher": {"model": "tiny-bert", "finetune": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 16}},
            "student": {"from_teacher": {"num_layers": 2}},
            "training": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16, "eval_every": 3, "num_threads": 1},
            "study": {"n_trials": args.trials, "sampler": "tpe", "pruner": "none",
                      "search_space": {"distill.temperature": {"type": "float", "low": 1, "high": 16, "log": True},
                                       "distill.alpha_soft": {"type": "float", "low": 0.1, "high": 0.9}}},
            "tracking": {"log_artifacts": False},
        }
        spec_path = work / "scaleout.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        storage = f"{PG}/{databases['optuna']}"
        started = time.perf_counter()
        processes.append(subprocess.Popen(CLI + ["study", "run", str(spec_path), "--storage", storage,
                                                 "--tracking-uri", tracking], cwd=work, env=env,
                                                stdout=open(work / "run.log", "w"), stderr=subprocess.STDOUT))
        import optuna

        while True:  # workers join once the study and its parent run exist
            try:
                if "mlflow_parent_run_id" in optuna.load_study(study_name="scaleout", storage=storage).user_attrs:
                    break
            except KeyError:
                pass
            time.sleep(0.5)
        for index in range(args.workers - 1):
            processes.append(subprocess.Popen(CLI + ["study", "worker", str(spec_path), "--storage", storage],
                                              cwd=work, env=env, stdout=open(work / f"worker{index}.log", "w"),
                                              stderr=subprocess.STDOUT))
        codes = [process.wait(timeout=3600) for process in processes]
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name="scaleout", storage=storage)
        states: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        logs = "\n".join(path.read_text() for path in work.glob("*.log"))
        errors = [line for line in logs.splitlines()
                  if "OperationalError" in line or "too many clients" in line or "connection" in line.lower()
                  and "error" in line.lower()]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("scaleout")
        running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        print(f"exit codes: {sorted(set(codes))}; trial states: {states}")
        print(f"connection errors in logs: {len(errors)}; MLflow runs left RUNNING: {len(running)}")
        for line in errors[:5]:
            print("  ", line[:200])
        print(f"{args.workers} workers, {args.trials}-trial TPE study over PostgreSQL: {finished} finished trials "
              f"in {wall:.1f} s wall")
    finally:
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
