"""Optuna studies of distillation runs, in floors that only look down:

- `storage`: where a study lives (journal file or RDB URL), its spec and digest, `StudyContext`;
- `summary`: what a study holds, read back (counts, best trial, trials table, params to rerun);
- `objective`: one trial (every seed of one sampled setting, recorded in MLflow);
- `workers`: the worker loop (one state decided and told per trial), crash recovery, local processes;
- `optuna_compat`: the only place that touches Optuna's private names.

The MLflow parent run of a study is created once; its id lives in the study's user attrs so
workers on any host attach their trial runs to it.
"""

from distill_lab.study.objective import check_against_models, prepare_shared_teacher, run_trial
from distill_lab.study.storage import (StudyContext, create_or_load, default_storage, load_study, open_storage,
                                       spec_digest, spec_of)
from distill_lab.study.summary import (best_trial, find_trial, finished_count, grid_size, layer_counts, replay_context,
                                       rerun_params, state_counts, study_line, target_trials, trials_table)
from distill_lab.study.workers import (end_orphan_runs, enqueue_missing_grid_points, ensure_tracking, reconcile,
                                       spawn_workers, work)

__all__ = [
    "StudyContext", "best_trial", "check_against_models", "create_or_load", "default_storage", "end_orphan_runs",
    "enqueue_missing_grid_points", "ensure_tracking", "find_trial", "finished_count", "grid_size", "layer_counts", "load_study",
    "open_storage", "prepare_shared_teacher", "reconcile", "replay_context", "rerun_params", "run_trial", "spawn_workers",
    "spec_digest", "spec_of", "state_counts", "study_line", "target_trials", "trials_table", "work",
]
