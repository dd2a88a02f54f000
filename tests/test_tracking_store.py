"""Opening one new local MLflow store from several processes at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill_lab.tracking import Tracker, TrackingError, _sqlite_key

# MLflow creates a new SQLite store's tables inside the first client that opens it. This opener
# widens that step by a second (the race window) and waits at a barrier until every opener is
# ready, so without a lock across processes all of them find no tables and migrate at once.
OPENER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow.store.db.utils as db_utils
    from distill_lab.tracking import mlflow_client

    initialize = db_utils._initialize_tables
    def slow_initialize(engine):
        time.sleep(1.0)
        initialize(engine)
    db_utils._initialize_tables = slow_initialize

    db, barrier, me, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < count:
        time.sleep(0.01)
    client = mlflow_client(f"sqlite:///{db}")
    client.create_experiment(f"opener {me}")
    print(sorted(e.name for e in client.search_experiments()))
""")


def test_processes_opening_one_new_sqlite_store_together_all_succeed(tmp_path: Path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    db = tmp_path / "store" / "mlflow.db"
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(db), str(barrier), str(n), "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in range(3)]
    outputs = [opener.communicate(timeout=300)[0] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0], outputs
    # One store, migrated once, holding every opener's experiment.
    from mlflow.tracking import MlflowClient
    names = {e.name for e in MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()}
    assert names == {"Default", "opener 0", "opener 1", "opener 2"}


def test_the_lock_is_keyed_on_the_database_file_however_the_uri_names_it(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _sqlite_key("sqlite:///mlflow.db") == _sqlite_key(f"sqlite:///{tmp_path}/mlflow.db") == str(tmp_path / "mlflow.db")
    assert _sqlite_key("sqlite:///mlflow.db?timeout=30") == str(tmp_path / "mlflow.db")
    assert _sqlite_key("sqlite:///other.db") != _sqlite_key("sqlite:///mlflow.db")
    assert _sqlite_key("sqlite:///:memory:") == "sqlite:///:memory:"


def _rival_inserts_first(db: Path, times: int):
    """A SQLAlchemy hook: just before MLflow writes an experiment tag it looked up and found absent,
    another process (here a raw connection) inserts the same tag: the race of two `study run`s."""
    from sqlalchemy.orm import Session

    left = {"times": times}

    def before_flush(session, flush_context, instances):
        tags = [obj for obj in session.new if type(obj).__name__ == "SqlExperimentTag"]
        if tags and left["times"] > 0:
            left["times"] -= 1
            with sqlite3.connect(db) as rival:
                rival.execute("INSERT OR REPLACE INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?)",
                              (tags[0].key, "rival", tags[0].experiment_id))
    return Session, before_flush


def test_an_experiment_tag_another_process_sets_at_the_same_moment_is_set_again(tmp_path: Path):
    from sqlalchemy import event

    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}")
    experiment_id = tracker.ensure_experiment("twin")
    session_class, hook = _rival_inserts_first(db, times=2)
    event.listen(session_class, "before_flush", hook)
    try:
        # One try is what MLflow does: the rival's row makes the insert fail.
        with pytest.raises(TrackingError, match="cannot tag experiment .* with 'spec': .*UNIQUE constraint failed"):
            tracker.tag_experiment(experiment_id, {"spec": "first"}, attempts=1)
        tracker.tag_experiment(experiment_id, {"spec": "mine", "other": "b"})
    finally:
        event.remove(session_class, "before_flush", hook)
    tags = tracker.client.get_experiment(experiment_id).tags
    assert (tags["spec"], tags["other"]) == ("mine", "b")


def test_an_experiment_tag_that_never_sets_is_a_tracking_error_naming_it(tmp_path: Path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = tracker.ensure_experiment("gone")
    tracker.client.delete_experiment(experiment_id)
    with pytest.raises(TrackingError, match="cannot tag experiment .* with 'spec': .*active"):
        tracker.tag_experiment(experiment_id, {"spec": "mine"}, attempts=2)
