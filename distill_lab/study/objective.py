"""One trial: resolve the sampled setting, run every seed, record it in MLflow, return its value.

The objective never tells Optuna anything: it returns the mean dev F1 of the kept checkpoints, or
raises (`optuna.TrialPruned` when the first seed's curve was pruned, anything else on failure);
the worker loop decides the trial's state once and tells it once (`workers.run_one`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import statistics
import time
from typing import Any, Callable

import optuna
import torch
import yaml

from distill_lab import models, naming, precision
from distill_lab.data.corpus import NerCorpus
from distill_lab.data.loader import load_corpus
from distill_lab.distill import resume
from distill_lab.distill.engine import resolve_device
from distill_lab.pipeline import RunResult, run_distillation
from distill_lab.plan import RunPlan, check_grid, load_plan
from distill_lab.record_schema import OPTUNA_STATE, ROLE, TEACHER, TEACHER_FINGERPRINT, TeacherRecord, TrialRecord, TrialStart
from distill_lab.signals import interrupted
from distill_lab.spec import RunConfig, StudySpec, resolve
from distill_lab.study import optuna_compat
from distill_lab.study.storage import StudyContext
from distill_lab.study.summary import sampled_params
from distill_lab.teacher import Teacher, prepare_init_source, prepare_teacher
from distill_lab.artifacts import confusion_figure, predictions_tsv
from distill_lab.tracking import RunHandle, Tracker

log = logging.getLogger(__name__)
Stage = Callable[[str, int, int], None]
# A running trial writes where it is (seed, stage, step) to its Optuna user attrs at most this often:
# `study status` shows it, with the time left, for trials on any machine of the study.
PROGRESS_SECONDS = 30.0
# Corpora read once per process: a worker's trials share them (keyed by the data spec).
_CORPUS_CACHE: dict[str, NerCorpus] = {}


def corpus_for(config: RunConfig) -> NerCorpus:
    key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
    if key not in _CORPUS_CACHE:
        _CORPUS_CACHE[key] = load_corpus(config.data)
    return _CORPUS_CACHE[key]


def check_against_models(spec: StudySpec) -> tuple[int, int]:
    """The spec's base run, and every grid point, planned against the real model configs (no weights):
    a point no trial could run (a mapping to a layer the student lacks) stops the study before it starts.
    Returns the base run's layer counts."""
    plan = load_plan(resolve(spec))
    for note in check_grid(spec):
        log.warning("%s", note)
    return plan.n_teacher, plan.n_student


def run_trial(trial: optuna.Trial, ctx: StudyContext, tracker: Tracker, experiment_id: str, parent_run_id: str,
              stage: Stage | None = None, defer: Callable[[Callable[[], None]], None] | None = None) -> float:
    """The objective: every seed of one sampled setting; returns the mean dev F1 of the kept checkpoints.

    `defer`: takes the job that writes the trial's artifacts and then ends its run FINISHED, for the
    caller to run after it has told Optuna (off the trial's critical path). Without it the job runs
    here, before the value is returned.
    """
    params = sampled_params(trial, ctx)
    base = resolve(ctx.spec, params)
    with tracker.run(experiment_id, naming.run_name(trial.number, base), tags=_trial_tags(trial, ctx, base),
                     parent_run_id=parent_run_id, finished_on=(optuna.TrialPruned,), keep_open=True) as run:
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({**base.flat(), "study.seeds": ctx.seeds, "optuna.trial_number": trial.number,
                        "optuna.params": json.dumps(params, default=str)})
        try:
            results = _run_seeds(trial, ctx, run, params, stage)
        except optuna.TrialPruned:
            raise
        except BaseException:
            # Any other way out (NaN, out of memory, a bug, Ctrl-C) makes the Optuna trial FAIL:
            # the tag must say so rather than stay RUNNING on a run that has ended.
            with contextlib.suppress(Exception):
                run.set_tags({OPTUNA_STATE: "FAIL"})
            raise
        value = _log_final(run, results, trial)
        run.set_tags({OPTUNA_STATE: "COMPLETE"})
        discard_resume_points(results)
    finish = functools.partial(_finish_run, tracker, run, results[0], base, ctx, deferred=defer is not None)
    if defer is None:
        finish()
    else:
        defer(finish)
    return value


def _finish_run(tracker: Tracker, run: RunHandle, result: RunResult, config: RunConfig, ctx: StudyContext, *,
                deferred: bool) -> None:
    """A completed trial's artifacts, then its run ended FINISHED: all present once it is. An artifact
    that cannot be written is tagged on the run; the trial's result stands."""
    try:
        _log_artifacts(run, result, config, ctx)
    except Exception as err:  # noqa: BLE001 - e.g. an artifact store that refuses: said on the run, not lost
        log.warning("trial run %s: artifacts not written: %r", run.run_id, err)
        with contextlib.suppress(Exception):
            run.set_tags({"artifact_error": repr(err)[:5000]})
    finally:
        tracker.close(run, "FINISHED", others_logging=deferred)  # deferred: the next trial may be logging


def _trial_tags(trial: optuna.Trial, ctx: StudyContext, base: RunConfig) -> dict[str, Any]:
    retry_of = optuna_compat.system_attrs(trial.study, trial).get("failed_trial")  # a dead worker's re-queued trial
    return TrialStart(study=ctx.spec.name, trial_number=trial.number, optuna_trial_id=optuna_compat.trial_id(trial),
                      setting=naming.setting(base), init=naming.init_name(base), mapping=naming.mapping_name(base),
                      retry_of_run=trial.user_attrs.get("mlflow_run_id") if retry_of is not None else None,
                      retry_of_trial=retry_of).to_mlflow()


class TrialProgress:
    """Where a running trial is, in its user attr `progress`: {seed, seeds, stage, step, total}."""

    def __init__(self, trial: optuna.Trial, seeds: int, every: float = PROGRESS_SECONDS) -> None:
        self.trial, self.seeds, self.every, self.written = trial, seeds, every, float("-inf")

    def stage(self, seed_index: int, inner: Stage | None) -> Stage:
        def report(name: str, step: int, total: int) -> None:
            if inner is not None:
                inner(name, step, total)
            now = time.monotonic()
            if now - self.written >= self.every or step == total:
                self.written = now
                with contextlib.suppress(Exception):  # a slow or unreachable storage must not fail the trial
                    self.trial.set_user_attr("progress", {"seed": seed_index + 1, "seeds": self.seeds,
                                                          "stage": name, "step": step, "total": total})
        return report


def _run_seeds(trial: optuna.Trial, ctx: StudyContext, run: RunHandle, params: dict[str, Any],
               stage: Stage | None) -> list[RunResult]:
    """Every seed of the trial. Their resume points stay until the trial's result is logged (the
    caller discards them): a worker killed in seed 3 leaves seeds 1 and 2 for the re-queued trial,
    which then only scores them. A pruned or failed trial discards them; an interrupt keeps them."""
    results: list[RunResult] = []
    try:
        _seed_loop(trial, ctx, run, params, stage, results)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        discard_resume_points(results)
        raise
    return results


def discard_resume_points(results: list[RunResult]) -> None:
    for result in results:
        resume.discarded(result.resume_point)


def _seed_loop(trial: optuna.Trial, ctx: StudyContext, run: RunHandle, params: dict[str, Any],
               stage: Stage | None, results: list[RunResult]) -> None:
    progress = TrialProgress(trial, len(ctx.seeds))
    plan: RunPlan | None = None  # the seed changes nothing the plan decides: made once per trial
    for seed_index, seed in enumerate(ctx.seeds):
        config = resolve(ctx.spec, {**params, "training.seed": seed})
        prefix = "" if seed_index == 0 else f"seed{seed}_"

        def on_eval(step: int, metrics: dict[str, float], seed_index: int = seed_index, prefix: str = prefix) -> bool:
            if interrupted():  # an interrupt whose KeyboardInterrupt Python swallowed mid-training
                raise KeyboardInterrupt("interrupted")
            logged = {f"{prefix}{k}": v for k, v in metrics.items() if k not in ("step", "epoch")}
            run.log_metrics(logged, step=step, synchronous=False)
            if seed_index == 0:  # pruning compares first-seed curves across trials
                trial.report(metrics["dev_f1"], step)
                return trial.should_prune()
            return False

        plan = plan or load_plan(config)
        result = run_distillation(config, on_eval=on_eval, stage=progress.stage(seed_index, stage),
                                  corpus=corpus_for(config), plan=plan, keep_resume=True)
        results.append(result)
        # Each seed's kept score as soon as it is known: `study status` shows the finished seeds of a
        # running trial (a multi-seed trial of a big model runs for an hour); _log_final writes it again.
        with contextlib.suppress(Exception):  # like the progress attr: storage trouble must not fail the trial
            trial.set_user_attr("dev_f1_per_seed", {str(r.config.training.seed): r.dev.f1 for r in results})
        if result.train_result.stopped_early:
            run.set_tags({OPTUNA_STATE: "PRUNED"})
            _log_final(run, results, trial)
            raise optuna.TrialPruned(f"pruned at step {result.train_result.steps}")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final_metrics(results: list[RunResult]) -> dict[str, float]:
    """A trial's summary metrics over its seeds (the kept checkpoint's scores; both evals logged)."""
    first, teacher = results[0], results[0].teacher
    value, value_std = _mean_std([r.dev.f1 for r in results])
    test, test_std = _mean_std([r.test.f1 for r in results])
    metrics = {
        "best_dev_f1": value, "best_dev_f1_std": value_std, "test_f1": test, "test_f1_std": test_std,
        "train_sample_f1": statistics.fmean(r.train_sample_f1 for r in results),
        "teacher_dev_f1": teacher.dev_f1, "teacher_test_f1": teacher.test_f1,
        "retention": value / teacher.dev_f1 if teacher.dev_f1 > 0 else 0.0,
        "student_params": first.student_params, "teacher_params": first.teacher_params,
        "compression": first.teacher_params / first.student_params,
        "tokens_per_second": statistics.fmean(r.train_result.tokens_per_second for r in results),
        "wall_seconds": sum(r.wall_seconds for r in results),
        "n_seeds": len(results),
        "resumed_steps": sum(r.train_result.resumed_from for r in results),  # steps resume points gave
        "dev_f1_best_eval": statistics.fmean(r.train_result.best_dev_f1 for r in results),
        "dev_f1_last_eval": statistics.fmean(
            r.train_result.last_dev_scores.f1 if r.train_result.last_dev_scores else r.dev.f1 for r in results),
    }
    speeds = [r.inference_speed.metrics() for r in results if r.inference_speed is not None]
    for name in speeds[0] if speeds else ():  # inference speed, student vs teacher: the seeds' median
        metrics[name] = statistics.median(s[name] for s in speeds)
    for entity, score in first.dev.per_type.items():
        metrics[f"dev_f1_{entity}"] = score
    return metrics


def trial_record(results: list[RunResult]) -> TrialRecord:
    """What a finished trial records in its run (every seed of one setting)."""
    first, teacher = results[0], results[0].teacher
    n_student = models.num_layers(first.student)
    return TrialRecord(
        teacher=naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
        student=naming.student_name(n_student, first.init.strategy),
        student_model=naming.student_model_name(first.config, teacher.ref.display_name, n_student),
        teacher_fingerprint=teacher.fingerprint,
        dev_f1={r.config.training.seed: r.dev.f1 for r in results},
        test_f1={r.config.training.seed: r.test.f1 for r in results},
        summary=final_metrics(results),
        extra_tags={"diagnosis": first.diagnosis, "diagnosis_advice": first.advice, "precision": first.precision,
                    "checkpoint": first.config.training.checkpoint})


def _log_final(run: RunHandle, results: list[RunResult], trial: optuna.Trial) -> float:
    tags, metrics = trial_record(results).to_mlflow()
    last_step = max(r.train_result.steps for r in results)
    run.log_metrics(metrics, step=last_step)
    # The MLflow UI's dev_f1 column shows the latest value: make that the best, not the last eval.
    run.log_metrics({"dev_f1": metrics["best_dev_f1"]}, step=last_step + 1)
    run.set_tags(tags)
    trial.set_user_attr("dev_f1_per_seed", {str(r.config.training.seed): r.dev.f1 for r in results})
    trial.set_user_attr("test_f1_per_seed", {str(r.config.training.seed): r.test.f1 for r in results})
    # The first seed's diagnosis, for `study run` to say while the study goes on (and `study status`).
    trial.set_user_attr("diagnosis", results[0].diagnosis)
    trial.set_user_attr("diagnosis_advice", results[0].advice)
    return metrics["best_dev_f1"]


def _log_artifacts(run: RunHandle, result: RunResult, config: RunConfig, ctx: StudyContext) -> None:
    if not ctx.spec.tracking.log_artifacts:
        return
    run.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")
    run.log_text(result.dev.report, "classification_report.txt")
    run.log_dict({"dev": result.dev.per_type, "test": result.test.per_type}, "per_type_f1.json")
    gold = [list(s.tags or ()) for s in result.dev_sentences]
    figure = confusion_figure(gold, result.dev_predictions, result.labels)
    run.log_figure(figure, "confusion_matrix.png")
    run.log_text(predictions_tsv(result.dev_sentences, result.dev_predictions), "sample_predictions.tsv")


def prepare_shared_teacher(ctx: StudyContext, tracker: Tracker, experiment_id: str, parent_run_id: str,
                           stage: Stage | None = None) -> Teacher:
    """Fine-tune (or load) the teacher once before workers start, and track it as its own run."""
    config = resolve(ctx.spec)
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    device = resolve_device(config.training.device)
    # The same precision the trials resolve: otherwise the study fine-tunes an fp32 teacher here and
    # every trial a second, bf16 one (another cache key).
    run_precision = precision.resolve(config.training.precision, device)
    teacher = prepare_teacher(config, corpus_for(config), device=device, precision=run_precision,
                              progress=stage and (lambda done, total: stage("teacher fine-tune", done, total)))
    if config.student.init.strategy == "finetuned":  # the student's own fine-tune, also once before workers
        prepare_init_source(config, corpus_for(config), device=device, precision=run_precision,
                            progress=stage and (lambda done, total: stage("student init fine-tune", done, total)))
    if tracker.find_run(experiment_id, {ROLE: TEACHER, TEACHER_FINGERPRINT: teacher.fingerprint}) is None:
        _log_teacher_run(ctx, config, teacher, tracker, experiment_id, parent_run_id)
    return teacher


def _log_teacher_run(ctx: StudyContext, config: RunConfig, teacher: Teacher, tracker: Tracker,
                     experiment_id: str, parent_run_id: str) -> None:
    tags, metrics = TeacherRecord(
        study=ctx.spec.name, fingerprint=teacher.fingerprint,
        teacher=naming.teacher_name(teacher.ref.display_name, models.num_layers(teacher.model)),
        dev_f1=teacher.dev_f1, test_f1=teacher.test_f1, params=models.count_parameters(teacher.model),
        reused=teacher.reused, fine_tune_seconds=teacher.fine_tune_seconds).to_mlflow()
    with tracker.run(experiment_id, f"teacher {teacher.ref.display_name}", tags=tags,
                     parent_run_id=parent_run_id) as run:
        recipe = config.teacher.finetune.model_dump() if config.teacher.finetune else {}
        run.log_params({"teacher.model": config.teacher.model, "teacher.checkpoint": config.teacher.checkpoint,
                        **{f"teacher.finetune.{k}": v for k, v in recipe.items()},
                        "data.max_length": config.data.max_length})
        run.log_metrics(metrics)
