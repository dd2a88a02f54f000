"""The commands that read what studies left behind: run records (export, curves) and dashboards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from distill_lab.cli_common import StorageOption, TrackingOption, console, out
from distill_lab.masking import mask_url

records_app = typer.Typer(help="Run records: a study's MLflow runs as committed, diffable JSON.", no_args_is_help=True)


@records_app.command("export")
def records_export(experiment: list[str] = typer.Argument(..., help="MLflow experiment (study) names."),
                   out_dir: Path = typer.Option(Path("results/records"), "--out", help="Output directory."),
                   merge: bool = typer.Option(False, "--merge", help="Keep the runs the existing file holds that this "
                                              "store lacks (the same study continued on another machine)."),
                   tracking_uri: Optional[str] = TrackingOption) -> None:
    """Export every run of the named experiments (ids, params, tags, metrics, dev curves) as JSON."""
    from distill_lab.records import export_experiment
    from distill_lab.tracking import default_tracking_uri

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in experiment:
        out.print(f"{name}: {export_experiment(name, default_tracking_uri(tracking_uri), out_dir, merge=merge)}")


@records_app.command("curves")
def records_curves(records: Path = typer.Argument(..., help="A `records export` file or a directory of them."),
                   studies: List[str] = typer.Option(..., "--study", help="Study name; repeat it to draw the arms "
                                                     "of several studies on one plot (a KD arm and its no-KD twin)."),
                   out_file: Path = typer.Option(..., "--out", help="PNG to write.")) -> None:
    """Dev-F1 learning curves of a study's arms from its run records (PNG), and each arm's peak."""
    from distill_lab.curves import curve_frame, draw, peaks

    frame = curve_frame(records, studies)
    draw(frame, f"{' + '.join(dict.fromkeys(studies))}: dev F1 during training", out_file)
    for row in peaks(frame).itertuples():
        out.print(f"{row.arm}: peak {row.peak_dev_f1 * 100:.2f} at step {row.peak_step}, "
                  f"last {row.last_dev_f1 * 100:.2f} at step {row.last_step}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}", highlight=False, soft_wrap=True)


@records_app.command("temperature")
def records_temperature(records: Path = typer.Argument(..., help="A `records export` file or a directory of them."),
                        study: str = typer.Option(..., "--study", help="A study that searched distill.temperature."),
                        baseline: Optional[str] = typer.Option(None, "--baseline", help="A one-arm study drawn as a "
                                                               "horizontal line (e.g. the no-KD twin)."),
                        out_file: Path = typer.Option(..., "--out", help="PNG to write.")) -> None:
    """Dev F1 vs temperature from a study's run records: seeds, the fit in log T, T*, and a baseline's line."""
    from distill_lab.report_analysis import temperature_plot

    fit, reference = temperature_plot(records, study, out_file, baseline=baseline)
    for temperature, mean, std, count in zip(fit.temperatures, fit.means, fit.stds, fit.counts):
        above = f", {100 * (mean - reference.mean):+.2f} vs baseline" if reference else ""
        out.print(f"T={temperature:g}: {mean * 100:.2f} ± {std * 100:.2f} (n={count}){above}", highlight=False)
    if reference:
        out.print(f"baseline {reference.label}: {reference.mean * 100:.2f} ± {reference.std * 100:.2f} "
                  f"(n={reference.seeds})", highlight=False, soft_wrap=True)
    out.print(f"verdict: {fit.verdict} — {fit.detail}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}", highlight=False, soft_wrap=True)


dashboard_app = typer.Typer(help="Study dashboards: a static HTML page, or optuna-dashboard.", no_args_is_help=True)


@dashboard_app.command("build")
def dashboard_build(study: str = typer.Argument(..., help="Study name."),
                    out_dir: Path = typer.Option(Path("dashboard"), "--out", help="Output directory."),
                    tracking_uri: Optional[str] = TrackingOption) -> None:
    """Write a self-contained HTML dashboard (works offline) and PNGs of the key plots."""
    from distill_lab.dashboard import build
    from distill_lab.tracking import default_tracking_uri

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    written = build(study, default_tracking_uri(tracking_uri), out_dir)
    for name, path in written.items():
        out.print(f"{name}: {path}")


@dashboard_app.command("serve")
def dashboard_serve(spec_or_name: str = typer.Argument(..., help="A spec file or a study name."),
                    storage: Optional[str] = StorageOption, port: int = typer.Option(8080, "--port"),
                    host: str = typer.Option("127.0.0.1", "--host")) -> None:
    """Start optuna-dashboard on the study's storage."""
    from distill_lab.dashboard import serve
    from distill_lab.study import default_storage
    from distill_lab.study import load_study
    from distill_lab.study_runner import study_name

    storage_url = storage or default_storage()
    name = study_name(spec_or_name)

    load_study(name, storage_url)  # a clear error for an unknown study before the server starts
    console.print(f"optuna-dashboard for {mask_url(storage_url)} on http://{host}:{port} (Ctrl-C to stop)")
    serve(storage_url, host, port)
