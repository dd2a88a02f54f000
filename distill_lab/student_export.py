"""Get a distilled student out: a trial's student as a model directory, an MLflow Model, a registered version.

A trial keeps no weights while the study runs (a study of 100 trials would store 100 students).
Its record is enough: the same spec, searched values and seed give the same weights, so a student
is re-trained from the record when it is needed (`export`, or `study run --save-best` once at the
end of the study, for the final best trial only) and the re-trained dev F1 is checked against the
recorded one. A student already logged as an MLflow Model (tag `student_model_uri`) is read back
instead; so is a `student/` checkpoint that older versions logged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
import torch
import transformers

from distill_lab import study as driver
from distill_lab.errors import DistillLabError
from distill_lab.pipeline import RunResult, run_distillation
from distill_lab.record_schema import BEST_STUDENT, LEGACY_BEST, STUDENT_MODEL, STUDY_TAG
from distill_lab.spec import resolve
from distill_lab.student_card import AGGREGATION, TASK, StudentFacts, save_student, student_pipeline, write_card
from distill_lab.study.objective import trial_record
from distill_lab.tracking import Tracker, temporary_directory, using_tracking_uri

log = logging.getLogger(__name__)
MODEL_NAME = "student"


@dataclass(frozen=True)
class Exported:
    """What `export_trial` / `publish_best` did: where the student is and how it was obtained."""

    directory: Path | None
    study: str | None
    trial: int | None
    run_id: str | None
    weights: str  # "re-trained", "MLflow Model <uri>" or "checkpoint student/ of run <id>"
    recorded_dev_f1: float | None = None  # the recorded first seed's dev F1 (re-trained students)
    dev_f1: float | None = None  # the re-trained student's dev F1
    model_uri: str | None = None
    registered_version: str | None = None

    @property
    def reproduced(self) -> bool | None:
        """Whether the re-trained dev F1 equals the recorded one to 4 decimals (None: not re-trained)."""
        if self.dev_f1 is None or self.recorded_dev_f1 is None:
            return None
        return round(self.dev_f1, 4) == round(self.recorded_dev_f1, 4)


def result_facts(result: RunResult, *, spec: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None) -> StudentFacts:
    """The card's facts of one finished run (`distill_lab.run`, or a re-trained trial)."""
    tags, metrics = trial_record([result]).to_mlflow()
    config = result.config.model_dump(mode="json")
    return StudentFacts(tags=tags, metrics=metrics, config=config, spec=spec or config, params=params or {},
                        provenance=provenance or {"source": "distill_lab.run", "seed": result.config.training.seed})


def export_result(result: RunResult, out: Path, facts: StudentFacts | None = None) -> Path:
    """Write a run's student, tokenizer and model card to `out`."""
    save_student(result.student, result.student_tokenizer, out)
    write_card(out, facts or result_facts(result))
    return out


def dev_texts(result: RunResult, limit: int = 20) -> list[str]:
    """A few dev sentences as plain text: candidate input examples for the logged model."""
    return [" ".join(sentence.tokens) for sentence in result.dev_sentences[:limit]]


def retrain(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_url: str) -> tuple[RunResult, float | None]:
    """The trial's first seed run again from its record; returns the run and the recorded dev F1."""
    ctx = driver.replay_context(study, storage_url)
    seed = ctx.seeds[0]
    config = resolve(ctx.spec, {**driver.rerun_params(trial, ctx), "training.seed": seed})
    result = run_distillation(config)
    recorded = trial.user_attrs.get("dev_f1_per_seed", {}).get(str(seed))
    return result, recorded


def _trial_facts(study: optuna.Study, trial: optuna.trial.FrozenTrial, ctx: driver.StudyContext, run: Any,
                 provenance: dict[str, Any]) -> StudentFacts:
    params = driver.rerun_params(trial, ctx)
    config = resolve(ctx.spec, {**params, "training.seed": ctx.seeds[0]})
    return StudentFacts(tags=run.data.tags, metrics=run.data.metrics, config=config.model_dump(mode="json"),
                        spec=study.user_attrs["spec"], params=params, provenance=provenance)


def _student_weights(run: Any, tracker: Tracker, out: Path) -> str | None:
    """Write an already logged student of the run into `out`; its description, or None when there is none."""
    uri = run.data.tags.get(STUDENT_MODEL)
    if uri:
        import mlflow

        with using_tracking_uri(tracker.uri):
            components = mlflow.transformers.load_model(uri, return_type="components")
        save_student(components["model"], components["tokenizer"], out)
        return f"MLflow Model {uri}"
    if run.data.tags.get(LEGACY_BEST):
        with temporary_directory() as directory:
            local = Path(tracker.client.download_artifacts(run.info.run_id, "student", str(directory)))
            model = transformers.AutoModelForTokenClassification.from_pretrained(local)
            save_student(model, transformers.AutoTokenizer.from_pretrained(local), out)
        return f"checkpoint student/ of run {run.info.run_id}"
    return None


def export_trial(study_name: str, out: Path, *, trial_number: int | None = None, run_id: str | None = None,
                 best: bool = False, storage_url: str | None = None, tracking_uri: str | None = None,
                 register: str | None = None) -> Exported:
    """A trial's student as a model directory with its card; logged and registered when `register` is given."""
    storage_url = storage_url or driver.default_storage()
    study = driver.load_study(study_name, storage_url)
    trial = driver.find_trial(study, trial_number, run_id, best=best)
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise DistillLabError(f"trial {trial.number} of study {study_name!r} is {trial.state.name}; "
                              "only a COMPLETE trial has a student to export")
    ctx = driver.replay_context(study, storage_url)
    tracker = Tracker(tracking_uri or ctx.spec.tracking.tracking_uri or _study_tracking_uri(study))
    run = tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
    provenance = {"title": f"{study_name} trial {trial.number}", "study": study_name, "trial": trial.number,
                  "mlflow_run": run.info.run_id}
    weights, recorded, dev_f1, examples = _student_weights(run, tracker, out), None, None, []
    if weights is None:
        result, recorded = retrain(study, trial, storage_url)
        save_student(result.student, result.student_tokenizer, out)
        dev_f1, weights, examples = result.dev.f1, "re-trained", dev_texts(result)
        provenance["weights"] = (f"re-trained from the trial's record (seed {result.config.training.seed}): dev F1 "
                                 f"{dev_f1:.6f}, recorded {recorded if recorded is None else f'{recorded:.6f}'}")
    else:
        provenance["weights"] = weights
    write_card(out, _trial_facts(study, trial, ctx, run, provenance))
    exported = Exported(out, study_name, trial.number, run.info.run_id, weights, recorded, dev_f1)
    if register:
        uri = run.data.tags.get(STUDENT_MODEL) or log_student_model(out, run.info.run_id, tracker, examples)
        exported = dataclasses.replace(exported, model_uri=uri, registered_version=register_student(uri, register, tracker))
    return exported


def _study_tracking_uri(study: optuna.Study) -> str:
    from distill_lab.tracking import default_tracking_uri

    stored = study.user_attrs.get("mlflow_tracking_uri")
    return stored if stored and "***" not in stored else default_tracking_uri()


def log_student_model(directory: Path, run_id: str, tracker: Tracker, examples: Sequence[str] = ()) -> str:
    """Log an exported student as an MLflow Model (transformers flavor, a token-classification pipeline
    with `aggregation_strategy="first"` as its inference config) into the run; returns the model URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    pipe = student_pipeline(directory)
    # MLflow's pyfunc fails on an output with no entity: the example is one where the student finds one.
    example = next((text for text in examples if pipe(text)), None)
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]))
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)  # "no model card on the hub" for a local dir
    with using_tracking_uri(tracker.uri):
        info = mlflow.transformers.log_model(
            pipe, name=MODEL_NAME, run_id=run_id, task=TASK, signature=signature,
            input_example=[example] if example else None, model_config={"aggregation_strategy": AGGREGATION},
            pip_requirements=requirements)
    tracker.client.set_tag(run_id, STUDENT_MODEL, info.model_uri)
    return info.model_uri


def register_student(model_uri: str, name: str, tracker: Tracker) -> str:
    """Register a logged student under `name` in the tracking store's model registry; its version."""
    import mlflow

    with using_tracking_uri(tracker.uri):
        version = mlflow.register_model(model_uri, name)
    return str(version.version)


def mark_best(tracker: Tracker, experiment_id: str, study_name: str, run_id: str, model_uri: str) -> None:
    """Only `run_id` of the study carries the best tag (and no run the older best-so-far tag)."""
    for key in (BEST_STUDENT, LEGACY_BEST):
        for other in tracker.client.search_runs([experiment_id], f"tags.{STUDY_TAG} = '{study_name}' and "
                                                f"tags.{key} != ''", max_results=1000):
            if other.info.run_id != run_id or key == LEGACY_BEST:
                tracker.client.delete_tag(other.info.run_id, key)
    tracker.client.set_tag(run_id, BEST_STUDENT, model_uri)


def publish_best(study: optuna.Study, ctx: driver.StudyContext, tracker: Tracker, *,
                 register: str | None = None) -> Exported | None:
    """`--save-best` at the end of a study: the final best trial's student re-trained from its record
    (once), logged as an MLflow Model into its run, tagged best (alone), registered when asked."""
    trial = driver.best_trial(study)
    if trial is None:
        return None
    run_id = trial.user_attrs["mlflow_run_id"]
    uri = tracker.client.get_run(run_id).data.tags.get(STUDENT_MODEL)
    recorded = dev_f1 = None
    if uri is None:
        result, recorded = retrain(study, trial, ctx.storage_url)
        dev_f1 = result.dev.f1
        with temporary_directory() as directory:
            export_result(result, directory, result_facts(result, spec=study.user_attrs["spec"],
                                                          params=driver.rerun_params(trial, ctx),
                                                          provenance={"study": study.study_name, "trial": trial.number,
                                                                      "mlflow_run": run_id}))
            uri = log_student_model(directory, run_id, tracker, dev_texts(result))
    mark_best(tracker, study.user_attrs["mlflow_experiment_id"], study.study_name, run_id, uri)
    version = register_student(uri, register, tracker) if register else None
    return Exported(None, study.study_name, trial.number, run_id, "re-trained" if dev_f1 is not None else uri,
                    recorded, dev_f1, uri, version)
