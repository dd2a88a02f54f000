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
    assert command[0] == "server"
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("/mlflow")
    assert command[command.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert "mlflow" in command[command.index("--allowed-hosts") + 1].split(",")


def test_compose_mlflow_server_runs_without_its_job_runner():
    environment = _compose()["services"]["mlflow"]["environment"]
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


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


def test_compose_validates_with_a_real_compose_implementation(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("DISTILL_LAB_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose not installed, and DISTILL_LAB_REQUIRE_COMPOSE=1 requires it")
        pytest.skip("docker-compose (Debian package) not installed")
    env = {**os.environ, "POSTGRES_PASSWORD": "only-for-validation"}
    result = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=tmp_path,
                             env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr
