"""Static study dashboard (one self-contained HTML page, plotly inlined: works offline) and PNGs.

Plots: dev F1 vs T with the quadratic fit and the T* band, parallel coordinates of params -> F1,
F1 by mapping strategy and by init (box + points), optimisation history, and the report table.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from matplotlib.figure import Figure

from distill_lab import report_table as reporting
from distill_lab.analysis import temperature_figure
from distill_lab.errors import DistillLabError
from distill_lab.record_schema import finished_trials, tag
from distill_lab.report_analysis import temperature_sections, uses_teacher
from distill_lab.records import load_runs
from distill_lab.study.storage import open_storage

TEMPLATE = Path(__file__).resolve().parent.parent / "dashboards" / "study.html"
FALLBACK_TEMPLATE = ("<!DOCTYPE html><title>{{ title }}</title><h1>{{ title }}</h1><p>runs from {{ source }}</p>"
                     "{% for name, fit in fits %}<p><b>{{ name }}</b>: {{ fit.verdict }}</p>{% endfor %}"
                     "{% for div in plots %}{{ div | safe }}{% endfor %}{{ table | safe }}")


def _trial_frame(runs: pd.DataFrame) -> pd.DataFrame:
    trials = finished_trials(runs).copy()  # pruned trials end FINISHED too; the report leaves them out
    if trials.empty:
        return trials
    trials["trial_number"] = pd.to_numeric(trials[tag("trial_number")], errors="coerce")
    trials["best_dev_f1"] = pd.to_numeric(trials.get("metrics.best_dev_f1"), errors="coerce")
    return trials.sort_values("trial_number")


def temperature_plot(fit: Any, rows: pd.DataFrame) -> Any:
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=rows["temperature"], y=rows["dev_f1"] * 100, mode="markers", name="seed runs",
                                marker=dict(size=6, opacity=0.5)))
    figure.add_trace(go.Scatter(x=fit.temperatures, y=[m * 100 for m in fit.means], mode="markers",
                                error_y=dict(type="data", array=[s * 100 for s in fit.stds]), name="mean ± std",
                                marker=dict(size=10)))
    grid = np.exp(np.linspace(math.log(min(fit.temperatures)), math.log(max(fit.temperatures)), 200))
    a, b, c = fit.coefficients
    figure.add_trace(go.Scatter(x=grid, y=(a + b * np.log(grid) + c * np.log(grid) ** 2) * 100, mode="lines",
                                name="quadratic fit in log T"))
    if fit.t_star is not None and fit.t_star_ci is not None:
        low = max(fit.t_star_ci[0], min(fit.temperatures) / 2)
        high = min(fit.t_star_ci[1], max(fit.temperatures) * 2)
        figure.add_vrect(x0=low, x1=high, fillcolor="green", opacity=0.12, line_width=0)
        figure.add_vline(x=fit.t_star, line_dash="dash", line_color="green")
        # On a log axis plotly.js places annotations at log10(x) (shapes take data values): the
        # annotation_text of add_vline/add_vrect would sit at x=10**T*, far off the plot.
        figure.add_annotation(x=math.log10(low), y=1, xref="x", yref="paper", text="T* 95% CI", showarrow=False,
                              xanchor="left", yanchor="top")
        figure.add_annotation(x=math.log10(fit.t_star), y=0, xref="x", yref="paper", text=f"T*={fit.t_star:.2f}",
                              showarrow=False, xanchor="left", yanchor="bottom", font=dict(color="green"))
    figure.update_layout(title=f"dev F1 vs temperature — {fit.verdict}", xaxis_type="log",
                         xaxis_title="temperature T (log)", yaxis_title="dev F1 (%)", height=420)
    return figure


def parallel_plot(trials: pd.DataFrame) -> Any | None:
    # The searched values of each trial, as Optuna sampled them (a mapping is a dict: use its name).
    sampled = [json.loads(text) if isinstance(text, str) else {}
               for text in trials.get("params.optuna.params", pd.Series(index=trials.index, dtype=object))]
    keys = list(dict.fromkeys(key for params in sampled for key in params))
    dimensions = []
    for key in keys:
        raw = [params.get(key) for params in sampled]
        if any(isinstance(value, dict) for value in raw):
            names = trials[tag("mapping")] if key == "distill.layer_mapping" and tag("mapping") in trials else None
            raw = list(names) if names is not None else [json.dumps(v, sort_keys=True) for v in raw]
        values = pd.to_numeric(pd.Series(raw, index=trials.index), errors="coerce")
        if values.notna().all():
            dimensions.append(dict(label=key.split(".")[-1], values=values))
        else:
            codes, labels = pd.factorize(pd.Series(raw, index=trials.index).astype(str))
            dimensions.append(dict(label=key.split(".")[-1], values=codes, tickvals=list(range(len(labels))),
                                   ticktext=[label[:18] for label in labels]))
    if not dimensions:
        return None
    dimensions.append(dict(label="dev F1 (%)", values=trials["best_dev_f1"] * 100))
    figure = go.Figure(go.Parcoords(line=dict(color=trials["best_dev_f1"] * 100, colorscale="Viridis",
                                              showscale=True), dimensions=dimensions))
    figure.update_layout(title="parameters → dev F1", height=420)
    return figure


def group_plot(rows: pd.DataFrame, factor: str, title: str) -> Any | None:
    if factor not in rows or rows[factor].nunique() < 2:
        return None
    frame = rows.assign(dev_f1_pct=rows["dev_f1"] * 100)
    figure = px.box(frame, x=factor, y="dev_f1_pct", points="all", title=title,
                    labels={"dev_f1_pct": "dev F1 (%)", factor: factor})
    figure.update_layout(height=420)
    return figure


def history_plot(trials: pd.DataFrame) -> Any:
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=trials["trial_number"], y=trials["best_dev_f1"] * 100, mode="markers",
                                name="trial"))
    figure.add_trace(go.Scatter(x=trials["trial_number"], y=trials["best_dev_f1"].cummax() * 100, mode="lines",
                                name="best so far"))
    figure.update_layout(title="optimisation history", xaxis_title="trial", yaxis_title="dev F1 (%)", height=380)
    return figure


def build(study: str, tracking_uri: str, out_dir: Path) -> dict[str, Path]:
    """Write index.html (+ PNGs of the temperature curve and the group comparison) into out_dir."""
    runs = load_runs(tracking_uri, [study])
    trials = _trial_frame(runs)
    if trials.empty:
        raise DistillLabError(f"study {study!r} has no finished trial runs yet")
    rows = reporting.seed_rows(runs)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DistillLabError(f"--out {out_dir}: cannot create directory ({err.strerror})") from None
    written: dict[str, Path] = {}
    figures = []
    fits = temperature_sections(runs, tracking_uri, log_to_parent=False)  # the report's own fit: one T* answer
    for _, fit in fits:
        figures.append(temperature_plot(fit, rows))
        written["temperature_png"] = _save_temperature_png(fit, out_dir / "temperature_curve.png")
    parallel = parallel_plot(trials)
    if parallel is not None:
        figures.append(parallel)
    if not rows.empty and (~uses_teacher(rows)).any() and rows["setting"].nunique() > 1:
        # A study with a no-KD arm: one box per (init, setting), so KD and no KD sit side by side.
        rows = rows.assign(arm=rows["init"].fillna("?") + " | " + rows["setting"].fillna("?"))
    for factor, title in (("mapping", "dev F1 by layer mapping"), ("init", "dev F1 by student init"),
                          ("arm", "dev F1 by init | setting (no KD: a=1/0/0)")):
        figure = group_plot(rows, factor, title)
        if figure is not None:
            figures.append(figure)
            written[f"{factor}_png"] = _save_group_png(rows, factor, title, out_dir / f"f1_by_{factor}.png")
    figures.append(history_plot(trials))
    table_html = reporting.render(reporting.experiment_table(runs), "html")
    divs = [pio.to_html(figure, full_html=False, include_plotlyjs=(index == 0), config={"displaylogo": False})
            for index, figure in enumerate(figures)]
    page = _page(study, tracking_uri, divs, table_html, fits)
    reporting.write_atomic(out_dir / "index.html", page)
    written["html"] = out_dir / "index.html"
    return written


def _page(study: str, tracking_uri: str, divs: list[str], table_html: str, fits: list[Any]) -> str:
    """The page from dashboards/study.html (jinja2, autoescaped: only the plots and the table are raw HTML)."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    # An installed wheel has no dashboards/ folder: a bare page then, with the same slots.
    source = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE.is_file() else FALLBACK_TEMPLATE
    return environment.from_string(source).render(
        title=f"distill-lab — {study}", source=tracking_uri, fits=fits, plots=divs, table=table_html)


def _save_temperature_png(fit: Any, path: Path) -> Path:
    figure = temperature_figure(fit)
    figure.savefig(path, dpi=120)
    return path


def _save_group_png(rows: pd.DataFrame, factor: str, title: str, path: Path) -> Path:
    groups = [(name, group["dev_f1"].to_numpy() * 100) for name, group in rows.groupby(factor)]
    figure = Figure(figsize=(max(6.4, 1.9 * len(groups)), 4.0))
    axes = figure.subplots()
    # Wrapped, not cut: "fine-tuned teacher weights" must stay readable under its box.
    labels = [textwrap.fill(str(name), 18) for name, _ in groups]
    axes.boxplot([values for _, values in groups], tick_labels=labels)
    for position, (_, values) in enumerate(groups, start=1):
        axes.scatter(np.full(len(values), position), values, alpha=0.6, s=14)
    axes.set_ylabel("dev F1 (%)")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """optuna-dashboard on the study's storage (blocks until interrupted)."""
    from optuna_dashboard import run_server  # lazy: only `dashboard serve` needs the server's imports

    run_server(open_storage(storage_url), host=host, port=port)
