"""What a study holds, read back: counts, the best trial, the trials table, a trial's params to rerun."""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from distill_lab import models, naming, search_space
from distill_lab.search_space import MAPPING_KEY
from distill_lab.spec import StudySpec
from distill_lab.errors import DistillLabError
from distill_lab.study.storage import FINISHED_STATES, StudyContext, spec_of


def state_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial (`study.best_trial`), None while there is none."""
    try:
        return study.best_trial
    except ValueError:  # Optuna: "No trials are completed yet."
        return None


def study_line(study: optuna.Study) -> str:
    counts = state_counts(study)
    best = best_trial(study)
    best_text = f"best {best.value * 100:.2f} (#{best.number})" if best else "best -"
    return (f"done {counts[TrialState.COMPLETE]} pruned {counts[TrialState.PRUNED]} "
            f"failed {counts[TrialState.FAIL]} running {counts[TrialState.RUNNING]}  {best_text}")


def trials_table(study: optuna.Study, ctx: StudyContext | None = None) -> list[dict[str, Any]]:
    """A row per trial. With `ctx` (the study's replay context) a sampled monotone mapping shows as
    the pairs it stands for, not as Optuna's per-layer offsets."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({
            "number": trial.number, "state": trial.state.name, "value": trial.value,
            "params": naming.compact_params(shown_params(trial, ctx)),
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""),
            "seconds": trial.duration.total_seconds() if trial.duration is not None else None,
            "reason": trial.user_attrs.get("fail_reason", "") or _diagnosis_text(trial),
            "progress": progress_text(trial) if trial.state == TrialState.RUNNING else "",
        })
    return rows


def samples_mapping(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial sampled a layer mapping (stored as Optuna params under `distill.layer_mapping.`)."""
    return any(key.startswith(f"{MAPPING_KEY}.") for key in trial.params or {})


def shown_params(trial: optuna.trial.FrozenTrial, ctx: StudyContext | None) -> dict[str, Any]:
    """A trial's searched values as a reader wants them: a layer mapping as its label."""
    params = {k: search_space.decode(v) for k, v in (trial.params or {}).items()}
    if ctx is None or not samples_mapping(trial):
        return params
    resolved = rerun_params(trial, ctx)
    mapping = resolved.get(MAPPING_KEY)
    if isinstance(mapping, dict):
        resolved[MAPPING_KEY] = naming.mapping_label(mapping["strategy"], mapping.get("pairs"),
                                                     bool(mapping.get("include_embeddings")))
    return resolved


def _diagnosis_text(trial: optuna.trial.FrozenTrial) -> str:
    diagnosis = trial.user_attrs.get("diagnosis")
    shown = trial.state == TrialState.COMPLETE and diagnosis and diagnosis != "ok"
    return f"diagnosis: {diagnosis}" if shown else ""


def diagnosis_news(study: optuna.Study, said: set[str], ctx: StudyContext | None = None) -> list[str]:
    """A line for the first finished trial showing each diagnosis other than `ok` not yet in `said`
    (which it extends): `study run` says it as soon as it shows, not after the grid has run. With
    `ctx`, a sampled mapping reads as its pairs.

    A weak teacher, an under-fitting recipe or collapsed labels seen on trial 1 of a 6-hour grid
    are worth stopping for; the rest of the trials with the same diagnosis are in `study status`.
    """
    lines = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        diagnosis = trial.user_attrs.get("diagnosis")
        if not diagnosis or diagnosis == "ok" or diagnosis in said:
            continue
        said.add(diagnosis)
        params = naming.compact_params(shown_params(trial, ctx))
        lines.append(f"trial #{trial.number} ({params or 'base values'}, dev F1 {trial.value * 100:.2f}): diagnosis "
                     f"{diagnosis}: {trial.user_attrs.get('diagnosis_advice', '')}")
    return lines


MIN_DONE_FOR_ESTIMATE = 0.05


def progress_text(trial: optuna.trial.FrozenTrial, now: datetime.datetime | None = None) -> str:
    """'seed 2/3 · distill 730/1314 · ~25 min left · seed 1: 86.11' for a running trial that reported
    where it is, with the dev F1 of each seed it has finished.

    The time left assumes the trial's seeds cost the same: elapsed x (1 - done) / done, where done
    counts finished seeds and the current one's share of its distillation steps; none before 5 %
    is done (at step 1 of 315 the start-up time would read as 99 minutes).
    """
    where = trial.user_attrs.get("progress")
    if not isinstance(where, dict) or not where.get("total"):
        return ""
    seed, seeds, step, total = (int(where[key]) for key in ("seed", "seeds", "step", "total"))
    text = f"seed {seed}/{seeds} · {where.get('stage', '?')} {step}/{total}"
    done = (seed - 1 + (step / total if where.get("stage") == "distill" else 0.0)) / max(seeds, 1)
    if trial.datetime_start is not None and done >= MIN_DONE_FOR_ESTIMATE:
        elapsed = ((now or datetime.datetime.now()) - trial.datetime_start).total_seconds()
        text += f" · ~{max(elapsed * (1 - done) / done, 0) / 60:.0f} min left"
    finished = trial.user_attrs.get("dev_f1_per_seed")
    if isinstance(finished, dict) and finished:
        text += " · " + ", ".join(f"seed {name}: {f1 * 100:.2f}" for name, f1 in finished.items())
    return text


def grid_size(spec: StudySpec) -> int:
    return len(search_space.grid_points(spec)) if search_space.is_grid(spec) else 0


def target_trials(spec: StudySpec, n_trials: int | None) -> int:
    if search_space.is_grid(spec):
        return grid_size(spec)
    return n_trials or spec.study.n_trials


def layer_counts(spec: StudySpec) -> tuple[int, int]:
    """Teacher and student layer counts from the model configs (no weights loaded)."""
    teacher_ref = models.resolve_reference(spec.teacher.model, trust_remote_code=spec.teacher.trust_remote_code,
                                           field="teacher.model")
    n_teacher = models.num_layers(models.load_config(teacher_ref))
    if spec.student.model:
        n_student = spec.student.num_layers or models.num_layers(models.load_config(models.resolve_reference(
            spec.student.model, field="student.model")))
    else:
        n_student = spec.student.from_teacher.num_layers if spec.student.from_teacher else 3
    return n_teacher, n_student


def sampled_params(trial: optuna.trial.BaseTrial, ctx: StudyContext) -> dict[str, Any]:
    return search_space.suggest(trial, ctx.spec, n_teacher=ctx.n_teacher, n_student=ctx.n_student)


def rerun_params(trial: optuna.trial.FrozenTrial, ctx: StudyContext) -> dict[str, Any]:
    """The exact sampled params of a recorded trial, replayed through the same search space."""
    return sampled_params(optuna.trial.FixedTrial(trial.params, number=trial.number), ctx)


def replay_context(study: optuna.Study, storage_url: str, tracking_uri: str = "") -> StudyContext:
    """A context to replay a stored study's trials: its stored spec and the models' layer counts."""
    spec = spec_of(study)
    n_teacher, n_student = layer_counts(spec)
    return StudyContext(spec, storage_url, tracking_uri, 1, n_teacher, n_student)


def find_trial(study: optuna.Study, trial_number: int | None = None, run_id: str | None = None, *,
               best: bool = False) -> optuna.trial.FrozenTrial:
    """One trial of a study: by number, by its MLflow run id, or the best COMPLETE one (exactly one way)."""
    chosen = [name for name, value in (("TRIAL", trial_number), ("--run-id", run_id), ("--best", best or None))
              if value is not None]
    if len(chosen) != 1:
        raise DistillLabError(f"choose the trial one way: a TRIAL number, --run-id or --best "
                              f"(got {', '.join(chosen) or 'none'})")
    trials = study.get_trials(deepcopy=False)
    if best:
        found = best_trial(study)
        if found is None:
            raise DistillLabError(f"study {study.study_name!r} has no COMPLETE trial yet "
                                  f"(see `distill-lab study status {study.study_name}`)")
        return found
    matches = [t for t in trials if (t.user_attrs.get("mlflow_run_id") == run_id if run_id else t.number == trial_number)]
    if not matches:
        raise DistillLabError(f"study {study.study_name!r} has no trial {run_id or trial_number} "
                              f"(trials 0..{len(trials) - 1})")
    return matches[0]
