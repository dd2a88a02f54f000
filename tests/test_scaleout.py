"""Scale-out against real servers: PostgreSQL-backed Optuna storage and a real `mlflow server`.

These tests skip when no PostgreSQL is reachable on 127.0.0.1:5432, unless
DISTILL_LAB_REQUIRE_POSTGRES=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
CLI = [sys.executable, "-m", "distill_lab.cli"]


def _postgres_available() -> str | None:
    try:
        import psycopg2

        connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3)
        connection.close()
        return None
    except Exception as err:  # noqa: BLE001
        return f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({type(err).__name__})"


@pytest.fixture(scope="module")
def postgres() -> str:
    reason = _postgres_available()
    if reason:
        if os.environ.get("DISTILL_LAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and DISTILL_LAB_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(reason)
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}"


def _admin(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@pytest.fixture()
def databases(postgres: str):
    """A fresh Optuna database and a fresh MLflow database, dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = {"optuna": f"dl_optuna_{suffix}", "mlflow": f"dl_mlflow_{suffix}"}
    for name in names.values():
        _admin(f"CREATE DATABASE {name}")
    yield {key: f"{postgres}/{name}" for key, name in names.items()}
    for name in names.values():
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        _admin(f"DROP DATABASE IF EXISTS {name}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def mlflow_server(databases: dict[str, str], tmp_path: Path):
    """A real MLflow tracking server on a free loopback port, PostgreSQL backend, temp artifacts."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", databases["mlflow"],
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        # MLflow's job runner starts ~8 consumer processes that nothing here uses. The pool bound is
        # compose's: 2 workers x (2 + 3) connections, not SQLAlchemy's 2 x (5 + 10), so a slow,
        # loaded run cannot take a third of the shared server's 100 connections by itself.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2",
             "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "3"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
    else:
        process.kill()
        raise RuntimeError("mlflow server did not become healthy in 120 s")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def _grid_spec(tmp_path: Path, name: str, temperatures: list[float], epochs: float = 1.0, n_train: int = 60) -> Path:
    spec = {
        "name": name,
        "data": {"source": "synthetic", "synthetic": {"n_train": n_train, "n_dev": 16, "n_test": 16},
                 "max_length": 32, "train_sample_size": 16},
        "teacher": {"model": "tiny-bert", "finetune": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16}},
        "student": {"from_teacher": {"num_layers": 2}},
        "training": {"epochs": epochs, "learning_rate": 3e-3, "batch_size": 8, "eval_every": 4,
                     "eval_batch_size": 32},
        "study": {"sampler": "grid", "search_space": {"distill.temperature": {"type": "grid",
                                                                               "values": temperatures}}},
        "tracking": {"log_artifacts": False},
    }
    path = tmp_path / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def _env(tmp_path: Path, default_heartbeat: bool = False) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISTILL_LAB_HEARTBEAT_INTERVAL", "DISTILL_LAB_GRACE_PERIOD")}
    env.update(DISTILL_LAB_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not default_heartbeat:  # a dead worker is noticed in seconds, not the default 40 s
        env.update(DISTILL_LAB_HEARTBEAT_INTERVAL="1", DISTILL_LAB_GRACE_PERIOD="6")
    return env


def _start(args: list[str], tmp_path: Path, log_name: str, default_heartbeat: bool = False) -> subprocess.Popen:
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen(CLI + args, cwd=tmp_path, env=_env(tmp_path, default_heartbeat), stdout=log,
                            stderr=subprocess.STDOUT)


def _load(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _runs(tracking_uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _start_study_and_workers(spec: Path, storage: str, tracking: str, tmp_path: Path, name: str,
                             extra_workers: int, local_workers: int = 1,
                             default_heartbeat: bool = False) -> list[subprocess.Popen]:
    runner = _start(["study", "run", str(spec), "--storage", storage, "--tracking-uri", tracking,
                     "--workers", str(local_workers)], tmp_path, "run.log", default_heartbeat)
    _wait_for(lambda: "mlflow_parent_run_id" in _load(storage, name).user_attrs, 180, "the study and its parent run")
    workers = [_start(["study", "worker", str(spec), "--storage", storage], tmp_path, f"worker{i}.log",
                      default_heartbeat) for i in range(extra_workers)]
    return [runner, *workers]


def _trial_states(storage: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in _load(storage, name).get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _logs(tmp_path: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(tmp_path.glob("*.log")))


@pytest.mark.slow
def test_scaleout_four_workers_run_each_grid_point_once(databases, mlflow_server, tmp_path):
    temperatures = [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0]
    # Four workers on one PostgreSQL study: two local ones the coordinator spawns (they start together,
    # so at least two workers share the grid however loaded the machine is) and two `study worker`s.
    spec = _grid_spec(tmp_path, "grid12", temperatures, epochs=3, n_train=80)
    processes = _start_study_and_workers(spec, databases["optuna"], mlflow_server, tmp_path, "grid12", 2,
                                         local_workers=2)
    for process in processes:
        assert process.wait(timeout=900) == 0, _logs(tmp_path)[-4000:]
    study = _load(databases["optuna"], "grid12")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(complete) == 12
    assert sorted(t.params["distill.temperature"] for t in complete) == sorted(temperatures)
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) >= 2, f"trials ran in only {workers}"
    runs = _runs(mlflow_server, "grid12")
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert len(children) == 12
    statuses = [(r.info.status, r.data.tags.get("optuna_state"), r.data.tags.get("error")) for r in children]
    assert all(status == "FINISHED" for status, _, _ in statuses), statuses
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    assert "database is locked" not in _logs(tmp_path)


@pytest.mark.slow
def test_scaleout_default_heartbeat_workers_hold_one_connection_each(databases, mlflow_server, tmp_path):
    from bench.scaleout_bench import ConnectionSampler, connected_span

    temperatures = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0]
    # The default heartbeat (10 s) and grace period (40 s), as an operator runs it: trials long enough
    # for the heartbeat thread to beat while the trial's own storage calls share the connection.
    spec = _grid_spec(tmp_path, "conn6", temperatures, epochs=12, n_train=80)
    sampler = ConnectionSampler({"optuna": databases["optuna"].rsplit("/", 1)[1]}, period=0.1)
    sampler.start()
    try:
        processes = _start_study_and_workers(spec, databases["optuna"], mlflow_server, tmp_path, "conn6", 1,
                                             local_workers=2, default_heartbeat=True)
        sampler.roots.update(process.pid for process in processes)
        for process in processes:
            assert process.wait(timeout=900) == 0, _logs(tmp_path)[-4000:]
    finally:
        sampler.done.set()
    trials = _load(databases["optuna"], "conn6").get_trials(deepcopy=False)
    # No live worker was judged dead by the default grace period, and every point ran once.
    assert sorted(t.params["distill.temperature"] for t in trials if t.state.name == "COMPLETE") == temperatures
    assert [t for t in trials if t.state.name != "COMPLETE"] == []
    # Coordinator, its two spawned workers and the `study worker`: one PostgreSQL connection each while
    # they work, a second only while two calls overlap (the heartbeat beside a trial's call).
    held = {pid: connected_span(counts) for pid, counts in sampler.per_process.items() if max(counts) > 0}
    assert len(held) == 4, sampler.per_process
    assert [statistics.median(counts) for counts in held.values()] == [1, 1, 1, 1], sampler.per_process
    assert sampler.peak_per_process() <= 2, sampler.report()
    assert [r for r in _runs(mlflow_server, "conn6") if r.info.status == "RUNNING"] == []


@pytest.mark.slow
def test_scaleout_sigkill_worker_loses_nothing(databases, mlflow_server, tmp_path):
    temperatures = [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0]
    # Trials of 120 steps: the warm coordinator must not finish all twelve before the two cold
    # `study worker`s (torch, transformers and MLflow to import) take one. At 30 steps a loaded
    # machine once let it, and the victim never got a trial to be killed in.
    spec = _grid_spec(tmp_path, "kill12", temperatures, epochs=12, n_train=80)
    processes = _start_study_and_workers(spec, databases["optuna"], mlflow_server, tmp_path, "kill12", 2)
    victim = processes[1]
    # Kill the worker in the middle of one of its trials.
    _wait_for(lambda: any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                          and t.user_attrs.get("mlflow_run_id")
                          for t in _load(databases["optuna"], "kill12").get_trials(deepcopy=False)),
              300, "the victim worker to be inside a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    for process in (processes[0], processes[2]):
        assert process.wait(timeout=900) == 0, _logs(tmp_path)[-4000:]
    study = _load(databases["optuna"], "kill12")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    dump = "\n".join(f"{t.number} {t.state.name} {t.params} {t.user_attrs.get('worker')} {t.system_attrs}"
                     for t in trials)
    assert sorted(t.params["distill.temperature"] for t in complete) == sorted(temperatures), dump
    dead = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and t.state.name == "FAIL"]
    assert len(dead) == 1
    runs = {r.info.run_id: r for r in _runs(mlflow_server, "kill12")}
    assert runs[dead[0].user_attrs["mlflow_run_id"]].info.status == "FAILED"
    retried = [r for r in runs.values() if r.data.tags.get("retry_of_run") == dead[0].user_attrs["mlflow_run_id"]]
    assert len(retried) == 1 and retried[0].info.status == "FINISHED"
    assert [r for r in runs.values() if r.info.status == "RUNNING"] == []


@pytest.mark.slow
def test_scaleout_sigterm_kills_run_and_point_is_completed(databases, mlflow_server, tmp_path):
    temperatures = [1.0, 2.0, 4.0, 8.0]
    # Trials long enough (240 steps) that the worker, which starts cold, gets a trial before the
    # warm coordinator has run all four, and that the signal lands inside training.
    spec = _grid_spec(tmp_path, "term4", temperatures, epochs=24, n_train=80)
    processes = _start_study_and_workers(spec, databases["optuna"], mlflow_server, tmp_path, "term4", 1)
    victim = processes[1]
    _wait_for(lambda: any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                          and t.user_attrs.get("mlflow_run_id")
                          for t in _load(databases["optuna"], "term4").get_trials(deepcopy=False)),
              300, "the victim worker to be inside a trial")
    sent = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    code = victim.wait(timeout=60)
    exit_seconds = time.monotonic() - sent
    assert code == 130
    assert exit_seconds < 30, f"worker took {exit_seconds:.1f} s to exit on SIGTERM"
    assert processes[0].wait(timeout=900) == 0, _logs(tmp_path)[-4000:]
    study = _load(databases["optuna"], "term4")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["distill.temperature"] for t in complete) == temperatures
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["fail_reason"] == "interrupted"
    runs = {r.info.run_id: r for r in _runs(mlflow_server, "term4")}
    assert runs[interrupted[0].user_attrs["mlflow_run_id"]].info.status == "KILLED"
    assert [r for r in runs.values() if r.info.status == "RUNNING"] == []


def test_scaleout_storage_and_tracking_must_differ(postgres, tmp_path):
    spec = _grid_spec(tmp_path, "same", [1.0, 2.0])
    url = f"{postgres}/postgres"
    result = subprocess.run(CLI + ["study", "run", str(spec), "--storage", url, "--tracking-uri", url],
                            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "must not share one database" in result.stderr
    assert "Traceback" not in result.stderr


def test_scaleout_sqlite_with_workers_is_refused(tmp_path):
    spec = _grid_spec(tmp_path, "lite", [1.0, 2.0])
    result = subprocess.run(CLI + ["study", "run", str(spec), "--storage", f"sqlite:///{tmp_path}/o.db",
                                   "--workers", "2"], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert "postgresql" in result.stderr.lower() and "journal" in result.stderr
    assert not (tmp_path / "o.db").exists()




def test_scaleout_a_storage_password_is_never_stored_or_printed(databases, tmp_path):
    # PostgreSQL here trusts local connections, so any password connects: plant one in the URL.
    secret = "S3cretPW9"
    storage = databases["optuna"].replace("postgres@", f"postgres:{secret}@")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _grid_spec(tmp_path, "secret2", [1.0, 2.0])
    done = subprocess.run(CLI + ["study", "run", str(spec), "--storage", storage, "--tracking-uri", tracking],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "postgres:***@" in done.stdout  # the summary names the storage, masked
    wrong = subprocess.run(CLI + ["study", "run", str(spec), "--storage", storage.replace("secret2", "x") + "_nodb",
                                  "--tracking-uri", tracking], cwd=tmp_path, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "cannot open Optuna storage" in wrong.stderr
    assert secret not in done.stdout + done.stderr + wrong.stdout + wrong.stderr
    study = _load(databases["optuna"], "secret2")
    stored = repr(study.user_attrs) + repr(study._storage.get_study_system_attrs(study._study_id)) + "".join(
        repr(t.user_attrs) + repr(t.system_attrs) + repr(t.params) for t in study.trials)
    assert secret not in stored
    runs = _runs(tracking, "secret2")
    assert runs and all(secret not in repr(r.data.params) + repr(r.data.tags) for r in runs)
    parent = [r for r in runs if r.data.tags.get("role") == "study"][0]
    assert parent.data.tags["optuna_storage"] == databases["optuna"].replace("postgres@", "postgres:***@")
