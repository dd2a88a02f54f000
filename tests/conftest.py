"""Shared test setup: offline, a private DISTILL_LAB_HOME, quiet libraries."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub; unknown references must fail fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# The test models are tiny: one thread is faster than two, and far faster when the cores are busy
# (set before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _distill_lab_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tiny models and cached teachers live here, shared by the whole session but never in the repo.
    home = tmp_path_factory.mktemp("distill_lab_home")
    os.environ["DISTILL_LAB_HOME"] = str(home)
