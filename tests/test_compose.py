"""docker-compose.yml: the services, the worker command, no committed secret, and a real compose check."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_four_services():
    services = _compose()["services"]
    assert {"postgres", "mlflow", "worker", "dashboard"} <= set(services)


def test_compose_worker_runs_study_worker_on_postgres():
    worker = _compose()["services"]["worker"]
    command = worker["command"]
    assert command[:2] == ["study", "worker"]
    storage = command[command.index("--storage") + 1]
    assert storage.startswith("postgresql+psycopg2://") and storage.endswith("/optuna")
    assert command[command.index("--tracking-uri") + 1] == "http://mlflow:5000"


def test_compose_mlflow_server_uses_postgres_and_artifact_store():
    command = _compose()["services"]["mlflow"]["command"]
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("/mlflow")
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert "mlflow" in command[command.index("--allowed-hosts") + 1].split(",")


def test_compose_mlflow_server_runs_without_its_job_runner():
    environment = _compose()["services"]["mlflow"]["environment"]
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_compose_bounds_the_postgres_connections_of_mlflow_and_says_the_server_limit():
    services = _compose()["services"]
    assert services["postgres"]["command"] == ["postgres", "-c", "max_connections=${POSTGRES_MAX_CONNECTIONS:-100}"]
    mlflow = services["mlflow"]
    workers = int(mlflow["command"][mlflow["command"].index("--workers") + 1])
    pool = int(mlflow["environment"]["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"])
    overflow = int(mlflow["environment"]["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"])
    assert workers * (pool + overflow) == 20  # the figure README and docs/benchmarks.md size max_connections with


def test_compose_optuna_and_mlflow_use_different_databases():
    init = (ROOT / "docker" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE optuna" in init and "CREATE DATABASE mlflow" in init


def test_compose_commits_no_secret_value():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    for line in text.splitlines():
        if "PASSWORD" in line and ":" in line:
            assert "${" in line, f"a literal password in docker-compose.yml: {line.strip()}"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked or not tracked


SECRETS = {"POSTGRES_PASSWORD": "only-for-validation", "MLFLOW_ADMIN_PASSWORD": "admin-password-for-validation",
           "MLFLOW_FLASK_SECRET_KEY": "flask-secret-for-validation", "MLFLOW_TRACKING_PASSWORD": "a-tracking-password"}


def test_compose_publishes_only_on_loopback_and_runs_mlflow_with_its_login():
    services = _compose()["services"]
    assert services["mlflow"]["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]
    assert services["dashboard"]["ports"] == ["127.0.0.1:${DASHBOARD_PORT:-8080}:8080"]  # no login of its own
    assert services["mlflow"]["entrypoint"] == ["/app/docker/mlflow-server.sh"]
    environment = services["mlflow"]["environment"]
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert environment["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SECRET_KEY:?")
    assert environment["MLFLOW_AUTH_CONFIG_PATH"] == "/app/docker/mlflow-auth.ini"
    assert services["worker"]["environment"]["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")
    hosts = services["mlflow"]["command"][services["mlflow"]["command"].index("--allowed-hosts") + 1].split(",")
    assert "${MLFLOW_PUBLIC_HOST:-localhost}:${MLFLOW_PORT:-5000}" in hosts


def _server_script(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "mlflow").write_text('#!/bin/sh\necho "mlflow $*"\n')
    (fake / "mlflow").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", **environment}
    return subprocess.run(["sh", str(ROOT / "docker" / "mlflow-server.sh"), "--port", "5000"], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("password", ["", "change-me", "password1234", "short"])
def test_mlflow_server_script_refuses_placeholder_secrets(tmp_path, password):
    result = _server_script(tmp_path, MLFLOW_AUTH_ADMIN_PASSWORD=password,
                            MLFLOW_FLASK_SERVER_SECRET_KEY="a-long-enough-flask-secret")
    assert result.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr and result.stdout == ""
    result = _server_script(tmp_path, MLFLOW_AUTH_ADMIN_PASSWORD="a-long-enough-password",
                            MLFLOW_FLASK_SERVER_SECRET_KEY=password)
    assert result.returncode == 2 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in result.stderr


def test_mlflow_server_script_starts_the_basic_auth_app(tmp_path):
    result = _server_script(tmp_path, MLFLOW_AUTH_ADMIN_PASSWORD="a-long-enough-password",
                            MLFLOW_FLASK_SERVER_SECRET_KEY="a-long-enough-flask-secret")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mlflow server --app-name basic-auth --port 5000"


def test_compose_validates_with_a_real_compose_implementation(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("DISTILL_LAB_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose not installed, and DISTILL_LAB_REQUIRE_COMPOSE=1 requires it")
        pytest.skip("docker-compose (Debian package) not installed")
    env = {**os.environ, **SECRETS}
    result = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                                             env=env, capture_output=True, text=True, timeout=120).stdout)
    for name in ("mlflow", "dashboard"):
        for port in rendered["services"][name]["ports"]:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name} published on {port}"
    assert rendered["services"]["mlflow"]["entrypoint"] == ["/app/docker/mlflow-server.sh"]
    for secret in SECRETS:
        missing = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=tmp_path,
                                 env={**{k: v for k, v in os.environ.items() if k not in SECRETS},
                                      **{k: v for k, v in SECRETS.items() if k != secret}},
                                 capture_output=True, text=True, timeout=120)
        assert missing.returncode != 0 and secret in missing.stderr
