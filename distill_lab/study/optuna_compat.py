"""What distill-lab needs from Optuna beyond its public API, in one place.

Optuna's public `Trial` / `Study` do not expose a trial's storage id, a live trial's system attrs,
the heartbeat thread of its own optimize loop, or a way to fail another process's trial. Each use
of Optuna's private names is here and nowhere else; `tests/test_optuna_compat.py` pins each to
Optuna's behaviour, so an upgrade that changes one fails there first.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState


def trial_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (unique across studies; `trial.number` is per study)."""
    return trial._trial_id  # type: ignore[union-attr]


def system_attrs(study: optuna.Study, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """A live trial's system attrs (`optuna.Trial` has none; only `FrozenTrial` does)."""
    return study._storage.get_trial_system_attrs(trial_id(trial))


def heartbeat_enabled(study: optuna.Study) -> bool:
    """True where the storage detects dead workers by heartbeat (RDB storage with an interval)."""
    return is_heartbeat_enabled(study._storage)


def heartbeat(study: optuna.Study, trial: optuna.trial.BaseTrial) -> AbstractContextManager[None]:
    """The heartbeat thread Optuna's own optimize loop runs around a trial (a no-op without heartbeat)."""
    return get_heartbeat_thread(trial_id(trial), study._storage)


def fail_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial, reason: str) -> None:
    """Mark another process's RUNNING trial FAIL with `reason` (`study.tell` only takes trials it may own)."""
    study._storage.set_trial_user_attr(trial_id(frozen), "fail_reason", reason)
    study._storage.set_trial_state_values(trial_id(frozen), TrialState.FAIL)
