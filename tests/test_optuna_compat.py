"""Pins each of Optuna's private names distill_lab.study.optuna_compat uses to Optuna's behaviour."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from distill_lab.study import optuna_compat


@pytest.fixture
def study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=2)
    return optuna.create_study(study_name="compat", storage=storage)


def test_trial_id_is_the_storage_id_of_live_and_frozen_trials(study):
    first, second = study.ask(), study.ask()
    ids = [optuna_compat.trial_id(first), optuna_compat.trial_id(second)]
    assert ids[0] != ids[1]
    frozen = study.get_trials(deepcopy=False)
    assert [optuna_compat.trial_id(t) for t in frozen] == ids
    assert study._storage.get_trial(ids[1]).number == 1


def test_system_attrs_of_a_live_trial_show_the_enqueued_params(study):
    study.enqueue_trial({"x": 1.5})
    queued, fresh = study.ask(), study.ask()
    assert optuna_compat.system_attrs(study, queued)["fixed_params"] == {"x": 1.5}
    assert "fixed_params" not in optuna_compat.system_attrs(study, fresh)


def test_heartbeat_runs_only_on_storages_with_an_interval(study, tmp_path):
    assert optuna_compat.heartbeat_enabled(study) is True
    journal = optuna.create_study(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))))
    assert optuna_compat.heartbeat_enabled(journal) is False
    trial = study.ask()
    before = threading.active_count()
    with optuna_compat.heartbeat(study, trial):
        assert threading.active_count() == before + 1
        time.sleep(0.1)
    assert threading.active_count() == before
    # A trial whose heartbeat stops goes stale (grace 2 s): Optuna's own fail_stale_trials then fails it.
    for _ in range(60):
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False)[0].state == TrialState.FAIL:
            break
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL


def test_fail_trial_fails_a_running_trial_with_its_reason(study):
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    optuna_compat.fail_trial(study, frozen, "worker h:1 died")
    after = study.get_trials(deepcopy=False)[0]
    assert after.state == TrialState.FAIL and after.user_attrs["fail_reason"] == "worker h:1 died"
    study.tell(trial, 1.0, skip_if_finished=True)  # its owner's late tell changes nothing
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL
