"""The analysis sections of a report: temperature fits and group comparisons with their intervals.

Reads the frame `records.load_runs` / `records.load_records` gives; writes nothing unless asked
(`log_to_parent`: the temperature plot and fit JSON on each study's parent run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from distill_lab.analysis import Baseline, TemperatureFit, compare_groups, fit_temperature, temperature_figure
from distill_lab.comparisons import comparison_table, load_comparisons
from distill_lab.record_schema import ROLE, STUDY, STUDY_TAG, StudyRecord, tag
from distill_lab.report_table import experiment_table, render, seed_rows, update_regions
from distill_lab.records import ReportError, UnknownStudyError, load_records, load_runs
from distill_lab.tracking import mlflow_client


def temperature_sections(runs: pd.DataFrame, tracking_uri: str, *, log_to_parent: bool = False,
                         n_bootstrap: int = 2000) -> list[tuple[str, Any]]:
    """Per study that searched distill.temperature: its fit (the PNG/JSON on the parent run only if asked)."""
    rows = seed_rows(runs)
    results = []
    if rows.empty or "temperature" not in rows:
        return results
    for study, group in rows.groupby("study"):
        searched = _searched(runs, study)
        if "distill.temperature" not in searched or group["temperature"].nunique() < 3:
            continue
        fit = fit_temperature(group["temperature"], group["dev_f1"], n_bootstrap=n_bootstrap)
        results.append((study, fit))
        if log_to_parent:
            parent = _parent_run(runs, study)
            if parent:
                client = mlflow_client(tracking_uri)
                figure = temperature_figure(fit, f"{study}: dev F1 vs T")
                client.log_figure(parent, figure, "analysis/temperature_curve.png")
                client.log_dict(parent, fit.as_dict(), "analysis/temperature_fit.json")
    return results


def temperature_plot(records: Path, study: str, out_file: Path, *, baseline: str | None = None,
                     n_bootstrap: int = 2000) -> tuple[TemperatureFit, Baseline | None]:
    """Draw a study's dev F1 vs T from its run records, with `baseline` (a study of one arm, e.g. the
    no-KD twin) as a horizontal line: does any temperature beat not distilling at all?"""
    runs = load_records(records, [study] + ([baseline] if baseline else []))
    fits = dict(temperature_sections(runs[runs[tag(STUDY_TAG)] == study], "", n_bootstrap=n_bootstrap))
    if study not in fits:
        raise ReportError(f"study {study!r}: its records hold no search over 3 or more temperatures")
    reference = None
    if baseline:
        rows = seed_rows(runs[runs[tag(STUDY_TAG)] == baseline])
        arms = rows.groupby(["setting", "init"]).ngroups if not rows.empty else 0
        if arms != 1:
            raise ReportError(f"--baseline {baseline}: needs finished runs of exactly one arm, found {arms}")
        label = f"{baseline} ({rows['setting'].iloc[0]})"
        reference = Baseline(label, float(rows["dev_f1"].mean()), float(rows["dev_f1"].std(ddof=1) if len(rows) > 1
                                                                         else 0.0), len(rows))
    figure = temperature_figure(fits[study], f"{study}: dev F1 vs T", baseline=reference)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=110)
    return fits[study], reference


@dataclass(frozen=True)
class GroupSection:
    """One study's comparison of one factor, within each stratum of the other arms it varied."""

    study: str
    factor: str  # mapping | init | setting, or a searched grid key (e.g. data.corrupt)
    reference: str
    strata: list[str]  # the other varied columns; empty when nothing else varied
    comparisons: list[tuple[tuple[Any, ...], Any]]  # (stratum values, GroupComparison)


# Columns that name an arm, in the order strata are written. A mapping is part of its setting label,
# so mappings are never stratified by setting.
_ARM_COLUMNS = ("student_model", "setting", "init", "mapping")


def group_sections(runs: pd.DataFrame) -> list[GroupSection]:
    """Group comparisons per study: mappings and inits where searched, and KD vs the no-KD arm.

    Each factor is compared within strata of the other arm columns that vary in the study (e.g. init
    within each student depth and setting), so a comparison never pools arms that differ in
    something else: pooling depths made the seed noise look like 4 F1 points.
    """
    rows = seed_rows(runs)
    sections: list[GroupSection] = []
    if rows.empty:
        return sections
    rows = rows.assign(kd=uses_teacher(rows))
    for study, group in rows.groupby("study"):
        searched = _searched(runs, study)
        factors = []
        if "distill.layer_mapping" in searched and group["mapping"].nunique() > 1:
            factors.append(("mapping", "uniform", _ARM_COLUMNS))
        if searched & {"student.init", "student.init.strategy"} and group["init"].nunique() > 1:
            factors.append(("init", "pretrained weights", _ARM_COLUMNS))
        plain = group.loc[~group["kd"], "setting"].dropna().unique()
        if len(plain) == 1 and group["kd"].any():
            factors.append(("setting", str(plain[0]), _ARM_COLUMNS))
        if not factors:  # no KD-vs-no-KD pair, mapping or init search: each grid key against its first value
            group, factors = _grid_factors(group, StudyRecord.search_space(runs, study) or {})
        for factor, reference, candidates in factors:
            # A mapping is part of its setting label: neither is a stratum of the other.
            excluded = {factor} | ({"setting", "mapping"} if factor in ("setting", "mapping") else set())
            strata = [c for c in candidates if c not in excluded and group[c].nunique(dropna=False) > 1]
            filled = group.assign(**{c: group[c].fillna("-") for c in strata})
            parts = filled.groupby(strata, sort=True) if strata else [((), filled)]
            comparisons = []
            for key, stratum in parts:
                if stratum[factor].nunique() < 2 or (factor == "setting" and reference not in set(stratum[factor])):
                    continue
                comparison = compare_groups(stratum, factor, reference=reference)
                _add_test_intervals(comparison, stratum)
                comparisons.append((key if isinstance(key, tuple) else (key,), comparison))
            if comparisons:
                # compare_groups falls back to the best group where the reference did not run.
                used = {comparison.reference for _, comparison in comparisons}
                shown = used.pop() if len(used) == 1 else "the best group of each stratum"
                sections.append(GroupSection(str(study), factor, shown, strata, comparisons))
    return sections


def grid_label(value: Any) -> str:
    """A grid value as the analysis names it: none, a number, a word, or compact JSON."""
    if value is None:
        return "none"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True).replace('"', "")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grid_factors(group: pd.DataFrame, space: dict[str, Any]) -> tuple[pd.DataFrame, list[tuple[str, str, Any]]]:
    """The study's grid keys with 2+ values as columns of `group` (from each run's sampled params),
    each compared against its FIRST listed value (the spec lists the reference first), within the
    strata of the other grid keys."""
    keys = [key for key, param in space.items()
            if isinstance(param, dict) and param.get("type") == "grid" and len(param.get("values") or ()) > 1
            and not (key == "distill.temperature" and len(param["values"]) >= 3)]  # the temperature fit's job
    if not keys or "sampled" not in group or group["sampled"].isna().any():
        return group, []
    sampled = group["sampled"].map(json.loads)
    columns = {key: sampled.map(lambda params, key=key: grid_label(params.get(key))) for key in keys}
    group = group.assign(**columns)
    return group, [(key, grid_label(space[key]["values"][0]), tuple(k for k in keys if k != key)) for key in keys]


def _add_test_intervals(comparison: Any, stratum: pd.DataFrame) -> None:
    """Test F1 beside dev F1: each row gains test_mean, test_diff and its Welch interval."""
    if "test_f1" not in stratum or stratum["test_f1"].isna().all():
        return
    test = {row[comparison.factor]: row
            for row in compare_groups(stratum, comparison.factor, reference=comparison.reference, score="test_f1").rows}
    for row in comparison.rows:
        other = test.get(row[comparison.factor])
        if other is None:
            continue
        row.update(test_mean=other["mean"], test_diff=other[f"diff_vs_{comparison.reference}"],
                   test_ci_low=other["ci_low"], test_ci_high=other["ci_high"])


def comparison_count(sections: list[GroupSection]) -> int:
    """How many differences (dev F1, non-reference groups) the analysis tests."""
    return sum(sum(row[comparison.factor] != comparison.reference for row in comparison.rows)
               for section in sections for _, comparison in section.comparisons)


def section_frame(section: GroupSection) -> pd.DataFrame:
    """The section's comparisons as one table (F1 points), one block of rows per stratum."""
    frames = []
    for key, comparison in section.comparisons:
        frame = comparison.as_frame().rename(columns={f"diff_vs_{comparison.reference}": "diff"})
        for column in ("mean", "std", "diff", "ci_low", "ci_high", "mde80", "test_mean", "test_diff", "test_ci_low",
                       "test_ci_high"):
            if column in frame:
                frame[column] = (frame[column] * 100).round(2)
        for name, value in reversed(list(zip(section.strata, key))):
            frame.insert(0, name, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def uses_teacher(rows: pd.DataFrame) -> pd.Series:
    """True where a run learns from the teacher (soft, hidden or attention loss), from its params."""
    weights = [pd.to_numeric(rows[column], errors="coerce").fillna(0.0)
               for column in ("alpha_soft", "alpha_hidden", "alpha_attention") if column in rows]
    if not weights:
        return pd.Series(True, index=rows.index)  # runs of older versions: assume distillation
    return pd.concat(weights, axis=1).gt(0).any(axis=1)


def _parent_run(runs: pd.DataFrame, study: str) -> str | None:
    parents = runs[(runs[tag(ROLE)] == STUDY) & (runs[tag(STUDY_TAG)] == study)]
    return None if parents.empty else str(parents["run_id"].iloc[0])


def _searched(runs: pd.DataFrame, study: str) -> set[str]:
    try:
        return set(StudyRecord.search_space(runs, study) or {})
    except (TypeError, ValueError):
        return set()


def _t_star_interval(interval: tuple[float, float] | None) -> str:
    if not interval:
        return "-"
    low, high = interval
    if low < 1e-6 or high > 1e6:  # many resamples have no maximum: the optimum runs off the axis
        return f"unbounded ([{low:.3g}, {high:.3g}]: many resamples have no interior maximum)"
    return f"[{low:.2f}, {high:.2f}]"


def analysis_markdown(runs: pd.DataFrame, tracking_uri: str, *, log_to_parent: bool = False) -> str:
    parts = []
    for study, fit in temperature_sections(runs, tracking_uri, log_to_parent=log_to_parent):
        ci = _t_star_interval(fit.t_star_ci)
        t_star = f"{fit.t_star:.2f}" if fit.t_star is not None else "none (no maximum)"
        points = pd.DataFrame({"T": fit.temperatures, "dev F1 mean": [f"{m * 100:.2f}" for m in fit.means],
                               "std": [f"{s * 100:.2f}" for s in fit.stds], "seeds": fit.counts})
        parts.append(
            f"### {study}: dev F1 vs temperature\n\n{points.to_markdown(index=False)}\n\n"
            f"- fit: dev F1 = {fit.coefficients[0]:.4f} + {fit.coefficients[1]:.4f}·ln T + "
            f"{fit.coefficients[2]:.4f}·(ln T)² over {fit.points} seed-level points\n"
            f"- T* = {t_star}, 95% bootstrap CI {ci} ({fit.bootstrap} resamples of seeds)\n"
            f"- curvature {fit.curvature:.4f}, 95% CI [{fit.curvature_ci[0]:.4f}, {fit.curvature_ci[1]:.4f}]\n"
            f"- **verdict: {fit.verdict}** — {fit.detail}\n")
    titles = {"mapping": "mapping", "init": "init", "setting": "setting (KD vs no KD)"}
    sections = group_sections(runs)
    if sections:
        count = comparison_count(sections)
        parts.append(f"Group comparisons below: {count} difference(s) to a reference arm, each with a 95 % Welch "
                     f"interval from the two arms' own seeds (dev F1; test F1 beside it, read once per arm), "
                     f"none corrected for multiplicity: about {0.05 * count:.1f} of {count} would exclude 0 "
                     f"by chance alone. `mde80`: the smallest true difference the comparison detects with 80 % "
                     f"power (Welch, from the two arms' seed stds); an interval containing 0 rules out only "
                     f"differences larger than it.\n")
    for section in sections:
        frame = section_frame(section)
        frame = frame.rename(columns={"diff": f"diff_vs_{section.reference}"})
        unreplicated = frame["within_noise"].isna().all()
        frame = frame.astype(object).where(frame.notna(), "-")
        note = "\nEvery group ran one seed: no noise estimate, so no interval and no verdict.\n" if unreplicated else ""
        within = f", within each {' / '.join(section.strata)}" if section.strata else ""
        parts.append(f"### {section.study}: dev F1 by {titles.get(section.factor, section.factor)}{within} "
                     f"(vs {section.reference}, F1 points)\n\n{frame.to_markdown(index=False)}\n{note}")
    return "\n".join(parts) if parts else ("_nothing to analyse: no study has 3 or more distinct temperatures, "
                                           "searched mappings or init strategies, or a no-KD arm beside KD arms_\n")


def report_text(studies: Sequence[str] | None, *, records: Path | None, tracking_uri: str, fmt: str = "markdown",
                lang: str = "en", analysis: bool = False, log_to_parent: bool = False) -> str:
    """The table of `studies` (all when None) from committed `records` or the store, with the analysis if asked."""
    runs = load_records(records, studies) if records is not None else load_runs(tracking_uri, studies)
    text = render(experiment_table(runs), fmt, lang)
    if analysis and fmt == "markdown":
        # A reader writes nothing unless asked (log_to_parent); committed records have no store.
        text += "\n" + analysis_markdown(runs, tracking_uri, log_to_parent=log_to_parent)
    return text


def update_document(path: Path, studies: Sequence[str] | None, *, comparisons: Path | None = None,
                    **options: Any) -> list[list[str] | None]:
    """Regenerate every report region of `path`; returns the regions kept because their studies are elsewhere.

    `comparisons`: the cross-study comparisons file whose groups fill `comparisons=` regions.
    """
    def region_text(names: list[str] | None) -> str | None:
        if names is None:  # a plain region: the command's own study selection
            return report_text(studies, **options)
        try:
            return report_text(names, **options)
        except UnknownStudyError:  # regenerated where its studies' runs are
            return None

    groups = load_comparisons(comparisons) if comparisons is not None else {}

    def compare_text(group: str) -> str | None:
        if group not in groups:
            raise ReportError(f"--update {path}: region comparisons={group} is not a group of {comparisons}")
        needed = sorted({study for item in groups[group] for study in item.studies()})
        try:
            runs = (load_records(options["records"], needed) if options.get("records") is not None
                    else load_runs(options["tracking_uri"], needed))
        except UnknownStudyError:  # regenerated where its studies' runs are
            return None
        return comparison_table(seed_rows(runs), groups[group])

    return update_regions(path, region_text, compare_text if comparisons is not None else None)
