"""The public Python API: the CLI's jobs as functions for notebooks and scripts.

    import distill_lab

    spec = distill_lab.load_spec("studies/quickstart.yaml", overrides={"training.epochs": 1})
    result = distill_lab.run(spec, **{"distill.temperature": 8})
    result.dev.f1, result.test.f1, result.student          # scores and the distilled torch model
    distill_lab.export(result, "student/")                 # a Hugging Face model directory + card
    ner = distill_lab.load_student("student/")             # pipeline with aggregation_strategy="first"

Each function reuses what the commands use (spec loading, `pipeline.run_distillation`, the study
driver, the report's table, the exporter); errors are `DistillLabError` with a one-line message.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import pandas as pd

from distill_lab import spec as specs
from distill_lab.errors import SpecError
from distill_lab.student_export import Exported, export_result, export_trial
from distill_lab.pipeline import RunResult, run_distillation
from distill_lab.spec import StudySpec
from distill_lab.student_card import student_pipeline

SpecSource = str | Path | Mapping[str, Any] | StudySpec


def _override_lines(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """`{"distill.temperature": 8}` or `["distill.temperature=8"]` as `--set` lines; `a__b` means `a.b`."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import json

        return [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise SpecError(f"overrides: a mapping or a list of 'dotted.key=value' strings, not the string {overrides!r}")
    return list(overrides)


def load_spec(source: SpecSource, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> StudySpec:
    """A validated study spec from a YAML path, a dict (as the YAML would read) or a spec.

    `overrides`: dotted keys to values (`{"training.epochs": 1}`; `training__epochs` also works)
    or `--set` style strings (`["training.epochs=1"]`). Unknown keys and bad values raise `SpecError`.
    """
    lines = _override_lines(overrides)
    if isinstance(source, StudySpec):
        return specs.parse_spec(source.written(), lines, source=f"spec {source.name!r}") if lines else source
    if isinstance(source, Mapping):
        return specs.parse_spec(dict(source), lines, source="spec")
    if isinstance(source, (str, Path)):
        return specs.load_spec(source, lines)
    raise SpecError(f"spec: a YAML path, a mapping or a StudySpec, not {type(source).__name__}")


def run(spec: SpecSource, overrides: Mapping[str, Any] | None = None, **settings: Any) -> RunResult:
    """One distillation with the spec's base values (no search), as `distill-lab run`.

    Settings by dotted key: `run(spec, **{"distill.temperature": 8})` or `run(spec, distill__temperature=8)`.
    Returns the `RunResult`: `.dev.f1` / `.test.f1` (and `.per_type`), `.teacher.dev_f1`, `.student`
    (the distilled `torch.nn.Module`), `.student_tokenizer`, `.summary()` (the CLI's `--json`).
    """
    study_spec = load_spec(spec, {**(overrides or {}), **settings})
    from distill_lab.runtime import quiet_libraries

    quiet_libraries()
    return run_distillation(specs.resolve(study_spec))


def run_study(spec: SpecSource, *, n_trials: int | None = None, storage: str | None = None,
          tracking_uri: str | None = None, workers: int = 1, timeout: float | None = None, save_best: bool = False,
          register: str | None = None, overrides: Mapping[str, Any] | None = None,
          verbose: bool = False) -> optuna.Study:
    """Create or resume a study and run it until `n_trials` trials are finished, as `distill-lab study run`.

    (Named `run_study`, not `study`: `distill_lab.study` is the package of the Optuna driver.)

    Storage and tracking default as on the command line (`.distill_lab/optuna.journal`, the spec's or
    `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`). `save_best` / `register`: at the end, the final
    best trial's student is logged as an MLflow Model (and registered under `register`). Returns the
    Optuna study (`.best_trial`, `.trials_dataframe()`); failures raise `DistillLabError`.
    """
    from rich.console import Console

    from distill_lab import study as driver
    from distill_lab import study_runner

    ctx = study_runner.study_context(load_spec(spec, overrides), storage=storage, tracking_uri=tracking_uri, n_trials=n_trials,
                        timeout=timeout, save_best=save_best, register=register, workers=workers)
    console = Console(stderr=True) if verbose else Console(file=io.StringIO())
    code = study_runner.run_study(ctx, workers=workers, console=console, out=console)
    if code:
        raise KeyboardInterrupt("the study was interrupted; run it again to resume")
    return driver.load_study(ctx.spec.name, ctx.storage_url)


def report(studies: str | Sequence[str] | None = None, *, tracking_uri: str | None = None,
           records: str | Path | None = None) -> pd.DataFrame:
    """The experiment table `distill-lab report` renders, as a numeric DataFrame.

    One row per (study, teacher/student pair, setting, init) with dev / test F1 mean and std over
    seeds (`dev_f1_mean`, `dev_f1_std`, `n`, `test_f1_mean`, ...), retention, params, compression,
    diagnosis and the MLflow run ids behind it, plus a reference row per teacher. Read from the
    tracking store, or from committed run records (`records`: a file or directory).
    """
    from distill_lab.records import load_records, load_runs
    from distill_lab.report_table import experiment_table
    from distill_lab.tracking import default_tracking_uri

    names = [studies] if isinstance(studies, str) else (list(studies) if studies is not None else None)
    if records is not None:
        runs = load_records(Path(records), names)
    else:
        runs = load_runs(default_tracking_uri(tracking_uri), names)
    return experiment_table(runs)


def export(source: RunResult | str, out: str | Path, *, trial: int | None = None, run_id: str | None = None,
           storage: str | None = None, tracking_uri: str | None = None, register: str | None = None) -> Path:
    """Write a student as a Hugging Face model directory (safetensors, tokenizer, config, README.md card).

    `source`: a `RunResult` of `run()`, or a study name (or its spec file) whose trial is chosen by
    `trial` number, `run_id`, or else the best COMPLETE trial. A trial without a logged student is
    re-trained from its record (same spec, searched values, first seed). `register`: also log the
    trial's student as an MLflow Model and register it under that name. Returns the directory.
    """
    out = Path(out)
    if isinstance(source, RunResult):
        if trial is not None or run_id is not None or register is not None:
            raise SpecError("export: trial, run_id and register choose a study's trial; a run() result is "
                            "exported as it is")
        return export_result(source, out)
    if not isinstance(source, str):
        raise SpecError(f"export: source must be a run() result or a study name, not {type(source).__name__}")
    from distill_lab.study_runner import study_name

    exported: Exported = export_trial(study_name(source), out, trial_number=trial, run_id=run_id,
                                      best=trial is None and run_id is None, storage_url=storage,
                                      tracking_uri=tracking_uri, register=register)
    return exported.directory or out


def load_student(directory: str | Path, **kwargs: Any) -> Any:
    """An exported student as `transformers.pipeline("token-classification")` with the aggregation its
    config records (`first`: one label per whole word, as the student was trained and scored)."""
    return student_pipeline(directory, **kwargs)
