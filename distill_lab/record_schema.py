"""What a tracked run records: the one written contract for tag, param and metric names.

distill-lab logs four kinds of MLflow runs, told apart by the tag `role`:

* `study`: one parent run per study (`StudyRecord`);
* `teacher`: the teacher's fine-tune, once per fingerprint (`TeacherRecord`);
* `trial`: one run per Optuna trial with every seed inside it (`TrialStart` when the run is created,
  `TrialRecord` when it finishes);
* `reference`: a peer toolkit's recipe, one run per seed (`bench/textbrewer_bench.py`; a
  `TrialRecord` with its own tags).

Writers log what `to_mlflow()` returns. Readers (report, analysis, dashboard, the orphan-run sweep)
read the frame `mlflow.search_runs` gives (columns `tags.*`, `params.*`, `metrics.*`) through
`finished_trials`, `TrialRecord.from_runs`, `TeacherRecord.from_runs` and `StudyRecord.search_space`.
`tests/fake_runs.py` fakes runs through the same records, so a renamed name reaches every side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

ROLE = "role"
STUDY, TEACHER, TRIAL, REFERENCE = "study", "teacher", "trial", "reference"
ROLES = (TRIAL, TEACHER, STUDY, REFERENCE)
# Tag on trial runs: the Optuna state the worker decided (a pruned trial's run ends FINISHED too).
OPTUNA_STATE = "optuna_state"
STUDY_TAG = "study"
TRIAL_ID = "optuna_trial_id"
TEACHER_FINGERPRINT = "teacher_fingerprint"
# On a trial run whose student was logged as an MLflow Model: the model's URI. BEST_STUDENT marks the
# one run of a study whose student is the study's final best (moved when a resumed study finds a better one).
STUDENT_MODEL = "student_model_uri"
BEST_STUDENT = "best_student"
LEGACY_BEST = "best_checkpoint"  # versions before BEST_STUDENT tagged every best-so-far trial with this
NOTE = "mlflow.note.content"  # the description the MLflow UI shows on a run
SEARCH_SPACE = "study.search_space"
# Per-seed scores of a trial run: dev_f1_seed<N> (the kept checkpoint's dev F1) and test_f1_seed<N>.
_SEED_METRIC = re.compile(r"metrics\.dev_f1_seed(-?\d+)")
# Columns the report keeps from a trial run, under their short names.
_TRIAL_COLUMNS = {
    "tags.study": "study", "tags.teacher": "teacher", "tags.student_model": "student_model",
    "tags.setting": "setting", "tags.init": "init", "tags.mapping": "mapping", "tags.diagnosis": "diagnosis",
    "metrics.teacher_dev_f1": "teacher_dev_f1", "metrics.student_params": "student_params",
    "metrics.compression": "compression", "metrics.speedup": "speedup", "params.distill.temperature": "temperature",
    "params.distill.alpha_soft": "alpha_soft", "params.distill.alpha_hidden": "alpha_hidden",
    "params.distill.alpha_attention": "alpha_attention", "tags.precision": "precision",
    "params.optuna.params": "sampled", "params.data.transfer.ratio": "transfer_ratio",
}
_NUMERIC = ("teacher_dev_f1", "student_params", "compression", "speedup", "temperature", "alpha_soft",
            "alpha_hidden", "alpha_attention", "transfer_ratio")


def tag(name: str) -> str:
    """The runs frame's column of a tag."""
    return f"tags.{name}"


def seed_metric(kind: str, seed: int) -> str:
    """`dev_f1_seed3`: a per-seed score of a trial (`kind` is dev_f1 or test_f1)."""
    return f"{kind}_seed{seed}"


def finished_trials(runs: pd.DataFrame, roles: Sequence[str] = (TRIAL,)) -> pd.DataFrame:
    """The runs of these roles that finished with a result: a pruned trial ends FINISHED too, but its
    Optuna state is PRUNED (reference runs carry no Optuna state)."""
    if runs.empty or tag(ROLE) not in runs:
        return runs.iloc[0:0]
    trials = runs[runs[tag(ROLE)].isin(roles) & (runs["status"] == "FINISHED")]
    if tag(OPTUNA_STATE) in trials:
        trials = trials[(trials[tag(OPTUNA_STATE)] == "COMPLETE") | (trials[tag(ROLE)] != TRIAL)]
    return trials


@dataclass(frozen=True)
class StudyRecord:
    """The study's parent run."""

    study: str
    optuna_storage: str  # masked: no password is ever tagged
    description: str = ""

    def identity(self) -> dict[str, str]:
        """The tags that find the parent run of this study (and no other run)."""
        return {ROLE: STUDY, STUDY_TAG: self.study, "optuna_storage": self.optuna_storage}

    def to_mlflow(self) -> dict[str, str]:
        return {**self.identity(), NOTE: self.description}

    @staticmethod
    def experiment_tags(written: Mapping[str, Any]) -> dict[str, str]:
        """Tags of the study's MLflow experiment, from the spec as written (no expanded secret): its
        question as the description the UI shows, what is distilled into what on which data, and the
        experiment kind that opens the classic runs view (MLflow 3 opens unknown kinds on GenAI pages)."""
        student = written.get("student") or {}
        shape = student.get("from_teacher")
        searched = ", ".join((written.get("study") or {}).get("search_space") or {}) or "nothing"
        data = written.get("data") or {}
        return {NOTE: f"{written.get('description') or written.get('name', '')}\n\nSearched: {searched}.",
                STUDY_TAG: str(written.get("name", "")),
                "teacher": str((written.get("teacher") or {}).get("model", "")),
                "student": f"{shape.get('num_layers', '?')} layers of the teacher" if shape else str(student.get("model", "")),
                "data": str(data.get("source", "")),
                "mlflow.experimentKind": "custom_model_development"}

    @staticmethod
    def params(settings: Mapping[str, Any]) -> dict[str, Any]:
        """The study section of the spec as params (`study.<key>`; the search space as JSON)."""
        params = {f"study.{key}": value for key, value in settings.items() if key != "search_space"}
        params[SEARCH_SPACE] = json.dumps(settings.get("search_space", {}))
        return params

    @staticmethod
    def search_space(runs: pd.DataFrame, study: str) -> dict[str, Any] | None:
        """The search space its parent run recorded, or None without a parent run."""
        if runs.empty or tag(ROLE) not in runs:
            return None
        parents = runs[(runs[tag(ROLE)] == STUDY) & (runs[tag(STUDY_TAG)] == study)]
        column = f"params.{SEARCH_SPACE}"
        if parents.empty or column not in parents:
            return None
        return json.loads(parents[column].iloc[0] or "{}")


@dataclass(frozen=True)
class TeacherRecord:
    """The teacher's fine-tune (or its reuse from the cache), tracked once per fingerprint."""

    study: str
    fingerprint: str
    teacher: str  # "MiniLM-L6 (6 layers)"
    dev_f1: float
    test_f1: float
    params: int
    reused: bool = False
    fine_tune_seconds: float | None = None

    def to_mlflow(self) -> tuple[dict[str, Any], dict[str, float]]:
        tags = {ROLE: TEACHER, STUDY_TAG: self.study, TEACHER_FINGERPRINT: self.fingerprint,
                "teacher": self.teacher, "reused_from_cache": self.reused}
        metrics = {"dev_f1": self.dev_f1, "test_f1": self.test_f1, "teacher_params": self.params}
        if self.fine_tune_seconds is not None:
            metrics["fine_tune_seconds"] = self.fine_tune_seconds
        return tags, metrics

    @staticmethod
    def from_runs(runs: pd.DataFrame) -> pd.DataFrame:
        """One row per finished teacher run: run_id, study, teacher, dev_f1, test_f1, params."""
        if runs.empty or tag(ROLE) not in runs:
            return pd.DataFrame(columns=["run_id", "study", "teacher", "dev_f1", "test_f1", "params"])
        teachers = runs[(runs[tag(ROLE)] == TEACHER) & (runs["status"] == "FINISHED")]
        return pd.DataFrame({"run_id": teachers["run_id"], "study": teachers[tag(STUDY_TAG)],
                             "teacher": teachers[tag("teacher")], "dev_f1": teachers["metrics.dev_f1"],
                             "test_f1": teachers["metrics.test_f1"], "params": teachers["metrics.teacher_params"]})


@dataclass(frozen=True)
class TrialStart:
    """The tags a trial run is created with (before any seed runs)."""

    study: str
    trial_number: int
    optuna_trial_id: int
    setting: str
    init: str
    mapping: str
    retry_of_run: str | None = None  # a re-queued trial of a dead worker links to the dead worker's run
    retry_of_trial: int | None = None

    def to_mlflow(self) -> dict[str, Any]:
        tags: dict[str, Any] = {ROLE: TRIAL, STUDY_TAG: self.study, "trial_number": self.trial_number,
                                TRIAL_ID: self.optuna_trial_id, OPTUNA_STATE: "RUNNING", "setting": self.setting,
                                "init": self.init, "mapping": self.mapping}
        if self.retry_of_trial is not None:
            tags.update(retry_of_run=self.retry_of_run, retry_of_trial=self.retry_of_trial)
        return tags


@dataclass(frozen=True)
class TrialRecord:
    """What a finished trial adds to its run: who was distilled into what, and its per-seed scores."""

    teacher: str
    student: str
    student_model: str
    teacher_fingerprint: str
    dev_f1: Mapping[int, float]  # seed -> the kept checkpoint's dev F1
    test_f1: Mapping[int, float]
    summary: Mapping[str, float] = field(default_factory=dict)  # best_dev_f1, test_f1, retention, ...
    extra_tags: Mapping[str, Any] = field(default_factory=dict)  # diagnosis, precision, checkpoint, ...

    def to_mlflow(self) -> tuple[dict[str, Any], dict[str, float]]:
        tags = {"teacher": self.teacher, "student": self.student, "student_model": self.student_model,
                TEACHER_FINGERPRINT: self.teacher_fingerprint, **self.extra_tags,
                "seeds": ",".join(str(seed) for seed in self.dev_f1)}
        metrics = dict(self.summary)
        for seed in self.dev_f1:
            metrics[seed_metric("dev_f1", seed)] = self.dev_f1[seed]
            metrics[seed_metric("test_f1", seed)] = self.test_f1[seed]
        return tags, metrics

    @staticmethod
    def from_runs(runs: pd.DataFrame) -> pd.DataFrame:
        """One row per (finished trial or reference run, seed): run_id, seed, dev_f1, test_f1 and the
        run's study, teacher, student_model, setting, init, mapping, diagnosis and numeric params."""
        trials = finished_trials(runs, (TRIAL, REFERENCE))
        if trials.empty:
            return pd.DataFrame(columns=["run_id", "seed", "dev_f1", "test_f1"])
        dev_columns = [c for c in trials.columns if _SEED_METRIC.fullmatch(c)]
        long = trials.melt(id_vars=["run_id"], value_vars=dev_columns, var_name="column", value_name="dev_f1")
        long = long.dropna(subset=["dev_f1"])
        long["seed"] = long["column"].str.extract(r"seed(-?\d+)$", expand=False).astype(int)
        test_columns = [c.replace("dev_f1", "test_f1") for c in dev_columns]
        test = trials.melt(id_vars=["run_id"], value_vars=[c for c in test_columns if c in trials],
                           var_name="column", value_name="test_f1")
        test["seed"] = test["column"].str.extract(r"seed(-?\d+)$", expand=False).astype(int)
        long = long.merge(test[["run_id", "seed", "test_f1"]], on=["run_id", "seed"], how="left")
        meta = trials[["run_id", *[c for c in _TRIAL_COLUMNS if c in trials]]].rename(columns=_TRIAL_COLUMNS)
        for name in _TRIAL_COLUMNS.values():  # runs of older versions may lack a tag: keep the column
            if name not in meta:
                meta[name] = float("nan") if name in _NUMERIC else None
        for name in _NUMERIC:
            meta[name] = pd.to_numeric(meta[name], errors="coerce")
        if tag("student") in trials:  # older runs named the student only in `student`
            meta["student_model"] = meta["student_model"].fillna(trials[tag("student")].str.split(",").str[0])
        return long.drop(columns="column").merge(meta, on="run_id", how="left")
