"""Dev-F1 learning curves of a study's arms (or of several studies'), drawn from committed run records.

Did every arm converge within its budget, and where did it peak? Each trial run keeps the dev F1
of every evaluation of every seed (`records export` stores them under `history`: `dev_f1` for the
first seed, `seed<N>_dev_f1` for the others). One line per arm (the mean over its seeds at each
evaluation step), a band from the lowest to the highest seed, a marker at the mean's peak.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure

from distill_lab.errors import DistillLabError
from distill_lab.record_schema import OPTUNA_STATE, ROLE, STUDY_TAG, TRIAL
from distill_lab.records import export_paths, load
from distill_lab.report_table import unnamed_params

_SEED_CURVE = re.compile(r"^(?:seed(-?\d+)_)?dev_f1$")
SETTING, INIT = "setting", "init"  # the trial-run tags that name an arm (TrialStart)


# Sampled parameters the setting or init tag already names.
_NAMED = ("distill", "student.init", "data.transfer", "data.augment", "data.corrupt")


def _sampled(record: dict[str, Any]) -> dict[str, str]:
    return unnamed_params(record["params"].get("optuna.params") or "{}", _NAMED)


def _arms(trials: list[dict[str, Any]]) -> list[str]:
    """Each trial's arm: its setting, with its init and any other searched value where trials differ in it."""
    sampled = [_sampled(record) for record in trials]
    varying = sorted({key for params in sampled for key in params
                      if len({p.get(key) for p in sampled}) > 1})
    with_init = len({record["tags"].get(INIT) for record in trials}) > 1
    arms = []
    for record, params in zip(trials, sampled):
        label = record["tags"].get(SETTING, "?")
        label = f"{record['tags'].get(INIT, '?')} | {label}" if with_init else label
        extra = " ".join(f"{key.rsplit('.', 1)[-1]}={params.get(key, '?')}" for key in varying)
        arms.append(f"{label} {extra}" if extra else label)
    return arms


def _trial_records(records: Path, study: str) -> list[dict[str, Any]]:
    runs = [record for path in export_paths(records) for record in load(path)["runs"]]
    return [record for record in runs
            if record["tags"].get(ROLE) == TRIAL and record["tags"].get(STUDY_TAG) == study
            and record["status"] == "FINISHED" and record["tags"].get(OPTUNA_STATE, "COMPLETE") == "COMPLETE"]


def _ends_with_the_trial_value(points: list[list[float]], metrics: dict[str, float]) -> bool:
    """The un-prefixed `dev_f1` history is the first seed's curve plus, one step after the last
    evaluation, the trial's value (so the MLflow UI's column shows it): not an evaluation."""
    return (len(points) > 1 and points[-1][0] == points[-2][0] + 1
            and points[-1][1] == metrics.get("best_dev_f1"))


def curve_frame(records: Path, studies: str | Sequence[str]) -> pd.DataFrame:
    """Columns arm, seed, evaluation (0, 1, ...), step, dev_f1: every dev evaluation of every
    finished trial of the study (or studies).

    The arm is the trial's setting, with its init and any other searched value (`num_layers=5`)
    where the study's trials differ in it; with several studies (a KD arm and its no-KD twin run as
    studies of their own) each arm is prefixed with its study's name.
    Raises DistillLabError when the records hold no finished trial of a study.
    """
    names = [studies] if isinstance(studies, str) else list(dict.fromkeys(studies))
    rows = []
    for study in names:
        trials = _trial_records(records, study)
        if not trials:
            raise DistillLabError(f"{records}: no finished trial of study {study!r} in these run records")
        prefix = f"{study}: " if len(names) > 1 else ""
        for record, arm in zip(trials, _arms(trials)):
            rows.extend({**row, "arm": prefix + arm} for row in _evaluations(record))
    return pd.DataFrame(rows, columns=["arm", "seed", "evaluation", "step", "dev_f1"])


def _evaluations(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every dev evaluation of every seed of one trial run: seed, evaluation, step, dev_f1."""
    rows = []
    for key, points in record.get("history", {}).items():
        match = _SEED_CURVE.match(key)
        if match is None:
            continue
        seed = match.group(1) or "first"
        points = sorted(points)
        if seed == "first" and _ends_with_the_trial_value(points, record["metrics"]):
            points = points[:-1]
        rows.extend({"seed": seed, "evaluation": index, "step": int(step), "dev_f1": float(value)}
                    for index, (step, value) in enumerate(points))
    return rows


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per arm and evaluation: mean, min and max dev F1 over the seeds, how many seeds, and the
    mean step (the k-th evaluation of every seed; the last one may fall a step apart)."""
    grouped = frame.groupby(["arm", "evaluation"])
    table = grouped["dev_f1"].agg(["mean", "min", "max", "count"]).join(grouped["step"].mean().round())
    return table.reset_index().sort_values(["arm", "evaluation"])


def peaks(frame: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the step of the mean curve's peak, the peak, the last step and the mean there."""
    rows = []
    for arm, curve in summary(frame).groupby("arm", sort=True):
        best = curve.loc[curve["mean"].idxmax()]
        last = curve.iloc[-1]
        rows.append({"arm": arm, "peak_step": int(best["step"]), "peak_dev_f1": float(best["mean"]),
                     "last_step": int(last["step"]), "last_dev_f1": float(last["mean"])})
    return pd.DataFrame(rows)


def ranked_arms(frame: pd.DataFrame) -> list[str]:
    """The arms by the mean dev F1 at their last evaluation, best first (the legend reads as a
    ranking, not lexically: T=12 before T=2); ties by name."""
    last = summary(frame).groupby("arm")["mean"].last()
    return sorted(last.index, key=lambda arm: (-last[arm], str(arm)))


def draw(frame: pd.DataFrame, title: str, path: Path) -> Path:
    """A PNG of the curves: mean line and min..max band per arm, the peak of each mean marked."""
    figure = Figure(figsize=(8.0, 4.8))
    axes = figure.subplots()
    curves = dict(tuple(summary(frame).groupby("arm")))
    for arm in ranked_arms(frame):
        curve = curves[arm]
        label = textwrap.shorten(str(arm), 90)
        line, = axes.plot(curve["step"], curve["mean"] * 100, marker=".", label=label)
        axes.fill_between(curve["step"], curve["min"] * 100, curve["max"] * 100, color=line.get_color(), alpha=0.15)
        best = curve.loc[curve["mean"].idxmax()]
        axes.scatter([best["step"]], [best["mean"] * 100], color=line.get_color(), s=50, zorder=3)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("dev F1 (%): mean over seeds, band = lowest..highest seed")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    except OSError as err:
        raise DistillLabError(f"--out {path}: cannot write the plot ({err.strerror})") from None
    return path
