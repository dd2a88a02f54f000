"""distill-lab command line.

Every DistillLabError becomes one line on stderr and exit code 2; `--debug` shows the traceback.
Each command imports what it needs when it runs: `--help`, a usage error or a bad spec answers
without loading torch, transformers and MLflow (seconds per call on a small machine).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from distill_lab.cli_common import StorageOption, TrackingOption, console, out
from distill_lab.cli_views import dashboard_app, records_app
from distill_lab.errors import DistillLabError
from distill_lab.masking import mask_url

app = typer.Typer(help="Sweeps of knowledge distillation for BERT-like NER models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
_state = {"debug": False}

SetOption = typer.Option(None, "--set", help="Override a spec value: dotted.key=value (repeatable).")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("distill-lab")
        except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
            number = "unknown (not installed)"
        print(f"distill-lab {number}")
        raise typer.Exit(0)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                            help="Print the version and exit.")) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _quiet_libraries() -> None:
    from distill_lab.runtime import quiet_libraries

    quiet_libraries()


@app.command()
def validate(spec: Path = typer.Argument(..., help="A study spec (YAML)."),
             overrides: Optional[list[str]] = SetOption) -> None:
    """Check a spec and print the resolved run config."""
    from distill_lab import precision, search_space
    from distill_lab.data.loader import check_data
    from distill_lab.models import resolve_reference
    from distill_lab.plan import check_grid, load_plan
    from distill_lab.spec import load_spec, resolve

    study_spec = load_spec(spec, overrides or [])
    search_space.check_space(study_spec)
    config = resolve(study_spec)
    check_data(config.data)
    if resolve_reference(study_spec.teacher.model, field="teacher.model").kind != "hub":
        _quiet_libraries()
        plan = load_plan(config)
        grid_notes = check_grid(study_spec)  # every point a grid study will run, not only the base
        out.print(f"models: teacher {plan.n_teacher} layers, student {plan.n_student} layers")
        for note in (*plan.notes, *precision.notes(config.training), *grid_notes):
            out.print(f"note: {note}", markup=False, soft_wrap=True)
    else:
        out.print("models: hub teacher, layer checks happen when the run loads it")
    out.print(f"[green]ok[/green] {spec}: study {study_spec.name!r}, "
              f"{len(study_spec.study.search_space)} searched parameter(s), {study_spec.study.n_trials} trials",
              soft_wrap=True)
    # soft_wrap: rich would otherwise wrap long lines (paths) at the console width and break the YAML.
    out.print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), markup=False, highlight=False,
              soft_wrap=True)


@app.command()
def run(spec: Path = typer.Argument(..., help="A study spec (YAML)."),
        overrides: Optional[list[str]] = SetOption,
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object.")) -> None:
    """Run ONE distillation with the spec's base values (no search)."""
    from distill_lab.spec import load_spec, resolve

    config = resolve(load_spec(spec, overrides or []))
    _quiet_libraries()
    from distill_lab.pipeline import run_distillation
    from distill_lab.progress import StageProgress
    from distill_lab.study_runner import print_run_summary

    # Bars only on a terminal (a failed run's stderr must stay one line); redirected, stage lines on stdout.
    lines = None if as_json or out.is_terminal else out
    with StageProgress(console, enabled=sys.stderr.isatty(), lines=lines) as progress:
        result = run_distillation(config, stage=progress.update)
    summary = result.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print_run_summary(summary, out)


study_app = typer.Typer(help="Optuna studies: run, join as a worker, inspect.", no_args_is_help=True)
trial_app = typer.Typer(help="Single trials of a study.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(trial_app, name="trial")
app.add_typer(records_app, name="records")
app.add_typer(dashboard_app, name="dashboard")



def _context(spec_path: Path, overrides: list[str] | None, storage: str | None, tracking_uri: str | None,
             n_trials: int | None, timeout: float | None, save_best: bool, workers: int = 1,
             register: str | None = None) -> Any:
    from distill_lab.spec import load_spec
    from distill_lab.study_runner import study_context

    return study_context(load_spec(spec_path, overrides or []), storage=storage, tracking_uri=tracking_uri,
                         n_trials=n_trials, timeout=timeout, save_best=save_best, register=register, workers=workers)


@study_app.command("run")
def study_run(spec: Path = typer.Argument(..., help="A study spec (YAML)."),
              storage: Optional[str] = StorageOption, tracking_uri: Optional[str] = TrackingOption,
              n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Finished trials wanted (default: spec)."),
              timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after S seconds."),
              workers: int = typer.Option(1, "--workers", help="Local worker processes."),
              save_best: bool = typer.Option(False, "--save-best", help="At the end, log the final best trial's "
                                             "student as an MLflow Model (re-trained once from its record)."),
              register: Optional[str] = typer.Option(None, "--register", help="With --save-best (implied): register "
                                                     "the best student in the model registry under NAME."),
              overrides: Optional[list[str]] = SetOption) -> None:
    """Create or resume a study and run it until n_trials trials are finished."""
    from distill_lab.study_runner import run_study

    ctx = _context(spec, overrides, storage, tracking_uri, n_trials, timeout, save_best, workers, register)
    code = run_study(ctx, workers=workers, console=console, out=out)
    if code:
        raise typer.Exit(code)


@study_app.command("worker")
def study_worker(spec: Path = typer.Argument(..., help="The study spec the study was created with."),
                 storage: str = typer.Option(..., "--storage", help="The study's shared Optuna storage URL."),
                 tracking_uri: Optional[str] = TrackingOption,
                 overrides: Optional[list[str]] = SetOption) -> None:
    """Join an existing study (created by `study run`) from any host and work until it is done."""
    from distill_lab.study_runner import run_worker

    ctx = _context(spec, overrides, storage, tracking_uri, None, None, False)
    raise typer.Exit(run_worker(ctx, console=console))


@study_app.command("status")
def study_status(spec_or_name: str = typer.Argument(..., help="A spec file or a study name."),
                 storage: Optional[str] = StorageOption, overrides: Optional[list[str]] = SetOption) -> None:
    """Print the trials table: number, state, params, value, MLflow run id."""
    from distill_lab.study_runner import print_status

    print_status(spec_or_name, storage, out, overrides or [])


@study_app.command("best")
def study_best(spec_or_name: str = typer.Argument(..., help="A spec file or a study name."),
               storage: Optional[str] = StorageOption,
               as_set: bool = typer.Option(False, "--as-set", help="Print KEY=VALUE lines usable as --set."),
               overrides: Optional[list[str]] = SetOption) -> None:
    """Print the best COMPLETE trial: number, dev F1, MLflow run and its searched values."""
    from distill_lab.study_runner import print_best

    print_best(spec_or_name, storage, as_set, out, overrides or [])


@trial_app.command("rerun")
def trial_rerun(study_name: str = typer.Argument(..., help="Study name."),
                trial_number: Optional[int] = typer.Argument(None, help="Trial number."),
                run_id: Optional[str] = typer.Option(None, "--run-id", help="Pick the trial by its MLflow run id."),
                storage: Optional[str] = StorageOption, tracking_uri: Optional[str] = TrackingOption,
                as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON.")) -> None:
    """Re-run one recorded trial with identical config and seeds; compare dev F1."""
    from distill_lab.study_runner import rerun_trial

    _quiet_libraries()
    raise typer.Exit(rerun_trial(study_name, trial_number, run_id, storage, tracking_uri, as_json, out, console))


@app.command()
def export(study_or_spec: str = typer.Argument(..., help="A study name or its spec file."),
           out_dir: Path = typer.Option(..., "--out", help="The model directory to write."),
           trial: Optional[int] = typer.Option(None, "--trial", help="The trial number."),
           run_id: Optional[str] = typer.Option(None, "--run-id", help="The trial's MLflow run id."),
           best: bool = typer.Option(False, "--best", help="The best COMPLETE trial (the default)."),
           register: Optional[str] = typer.Option(None, "--register", help="Also log the student as an MLflow "
                                                  "Model in the trial's run and register it under NAME."),
           storage: Optional[str] = StorageOption, tracking_uri: Optional[str] = TrackingOption) -> None:
    """Write a trial's student as a Hugging Face model directory with its model card."""
    from distill_lab.study_runner import study_name

    _quiet_libraries()
    from distill_lab.student_export import export_trial
    exported = export_trial(study_name(study_or_spec), out_dir, trial_number=trial, run_id=run_id,
                            best=best or (trial is None and run_id is None), storage_url=storage,
                            tracking_uri=tracking_uri, register=register)
    check = "" if exported.reproduced is None else (
        f"; re-trained dev F1 {exported.dev_f1:.4f}, recorded {exported.recorded_dev_f1:.4f}"
        f"{'' if exported.reproduced else ' (NOT the same to 4 decimals)'}")
    out.print(f"trial #{exported.trial} of {exported.study}: {exported.weights} -> {out_dir}{check}", soft_wrap=True)
    if exported.registered_version:
        out.print(f"registered {register!r} version {exported.registered_version} ({exported.model_uri})")


@app.command()
def report(study: Optional[list[str]] = typer.Option(None, "--study", help="Study name (repeatable; default all)."),
           markdown: bool = typer.Option(False, "--markdown", help="Markdown table (the default)."),
           csv: bool = typer.Option(False, "--csv", help="CSV with numeric columns."),
           html: bool = typer.Option(False, "--html", help="HTML table."),
           as_json: bool = typer.Option(False, "--json", help="JSON records with numeric columns."),
           lang: str = typer.Option("en", "--lang", help="Header language: en | zh."),
           analysis: bool = typer.Option(False, "--analysis", help="Add the temperature fit and group comparisons."),
           out_file: Optional[Path] = typer.Option(None, "--out", help="Write to FILE instead of stdout."),
           update: Optional[Path] = typer.Option(None, "--update", help="Rewrite the marked region of FILE."),
           records: Optional[Path] = typer.Option(None, "--records", help="Read committed run records (a "
                                                  "`records export` file or directory) instead of a store."),
           log_to_runs: bool = typer.Option(False, "--log-to-runs", help="With --analysis: also log the "
                                            "temperature-fit plot and JSON to each study's parent run."),
           comparisons: Optional[Path] = typer.Option(None, "--comparisons", help="With --update: a YAML file of "
                                                      "cross-study comparisons that fills `comparisons=` regions."),
           tracking_uri: Optional[str] = TrackingOption) -> None:
    """Rebuild the experiment table (teacher/student, setting, init, score) from tracked runs."""
    from distill_lab import report_table as reporting
    from distill_lab.report_analysis import report_text, update_document
    from distill_lab.tracking import default_tracking_uri

    fmt = _report_format({"markdown": markdown, "csv": csv, "html": html, "json": as_json}, lang, update=update,
                         records=records, tracking_uri=tracking_uri, analysis=analysis, log_to_runs=log_to_runs)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    uri = default_tracking_uri(tracking_uri)
    options = {"records": records, "tracking_uri": uri, "fmt": fmt, "lang": lang, "analysis": analysis,
               "log_to_parent": log_to_runs}
    if comparisons is not None and update is None:
        raise DistillLabError("--comparisons fills the regions of a document: use it with --update FILE")
    if update is not None:
        source = f"run records {records}" if records is not None else uri
        for names in update_document(update, study, comparisons=comparisons, **options):
            console.print(f"kept the region of {', '.join(names or [])}: not all of its studies are in {source}")
        console.print(f"updated the report regions of {update}")
        return
    text = report_text(study, **options)
    if out_file is not None:
        reporting.write_atomic(out_file, text)
        console.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


def _report_format(chosen: dict[str, bool], lang: str, *, update: Optional[Path], records: Optional[Path],
                   tracking_uri: Optional[str], analysis: bool, log_to_runs: bool) -> str:
    """The output format of `report`, after refusing option combinations that cannot be honoured."""
    from distill_lab.report_table import HEADERS

    formats = [name for name, on in chosen.items() if on]
    if len(formats) > 1:
        raise DistillLabError(f"choose one output format, got {', '.join('--' + f for f in formats)}")
    if lang not in HEADERS:
        raise DistillLabError(f"--lang {lang!r}: allowed {', '.join(HEADERS)}")
    if update is not None and formats and formats[0] != "markdown":
        raise DistillLabError("--update writes a markdown table; drop --csv/--html/--json")
    fmt = formats[0] if formats else "markdown"
    if records is not None and tracking_uri is not None:
        raise DistillLabError("--records and --tracking-uri name two sources: choose one")
    if analysis and fmt != "markdown":
        raise DistillLabError(f"--analysis writes markdown sections; drop --{fmt} or --analysis")
    if lang != "en" and fmt in ("csv", "json"):
        raise DistillLabError(f"--lang {lang} translates the markdown and HTML headers; --{fmt} keeps the column names")
    if log_to_runs and (records is not None or not analysis):
        raise DistillLabError("--log-to-runs logs the --analysis figures to a tracking store: needs --analysis, "
                              "not --records")
    if update is not None and not update.is_file():
        raise DistillLabError(f"--update {update}: file not found")
    return fmt


@app.command()
def ui(tracking_uri: Optional[str] = TrackingOption,
       port: int = typer.Option(5000, "--port"), host: str = typer.Option("127.0.0.1", "--host")) -> None:
    """Start the MLflow UI on the tracking store in use."""
    import subprocess

    from distill_lab.tracking import default_tracking_uri

    uri = default_tracking_uri(tracking_uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    console.print(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(command))


def main() -> None:
    """Console entry point: one clean line for user errors, exit code 2."""
    try:
        # standalone_mode=False returns (not raises) the code of typer.Exit(n): pass it on.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except DistillLabError as err:
        if _state["debug"]:
            traceback.print_exc()
        # Plain print: messages contain brackets (e.g. layer lists) that rich would read as markup.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # click usage errors carry their own exit code
        if isinstance(err, _click_exceptions()):
            err.show()
            sys.exit(err.exit_code)
        raise


def _click_exceptions() -> tuple[type, ...]:
    """Usage-error classes: click's, and those of the copy of click that newer typer releases vendor."""
    classes = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            classes.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


if __name__ == "__main__":
    main()
