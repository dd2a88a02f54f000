"""The practitioner's experiment table, rebuilt from tracked runs with pandas.

Runs come from `mlflow.search_runs` (a DataFrame); seeds are exploded to one row each from the
per-seed metrics, grouped by (teacher, student, setting, init) and aggregated to mean ± std.
Scores are the BEST dev F1 of each run (logged as `dev_f1_seed<N>` / `best_dev_f1`), never the
last step's value.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from distill_lab.errors import DistillLabError

BEGIN = "<!-- distill-lab:report:begin -->"
END = "<!-- distill-lab:report:end -->"
# A region may name its studies: <!-- distill-lab:report:begin studies=a,b -->. One document can then
# hold several regions, each regenerated from its own studies' runs (e.g. from separate stores).
REGION_BEGIN = re.compile(r"<!-- distill-lab:report:begin(?: studies=([\w.-]+(?:,[\w.-]+)*))? -->")
GROUP_KEYS = ["study", "pair", "setting", "init"]
HEADERS = {
    "en": {"pair": "teacher / student", "setting": "setting", "init": "init", "score": "score (dev F1)"},
    "zh": {"pair": "模型的参数选取", "setting": "蒸馏设定", "init": "初始化方式", "score": "产出模型表现"},
}
EXTRA_HEADERS = {"test": "test F1", "retention": "retention", "params": "student params",
                 "compression": "compression", "diagnosis": "diagnosis", "study": "study", "runs": "MLflow runs"}
EXTRA_HEADERS_ZH = {"test": "测试集 F1", "retention": "保留率", "params": "学生参数量", "compression": "压缩比",
                    "diagnosis": "诊断", "study": "实验", "runs": "MLflow 运行"}
RUN_ID_CHARS = 8  # a prefix that finds the run in the MLflow UI's search and in results/records


class ReportError(DistillLabError):
    """Nothing to report, or the output cannot be written."""


class UnknownStudyError(ReportError):
    """A study named on the command line or in a report region has no runs in the store."""


# reference: runs of a peer's recipe logged beside the studies (bench/textbrewer_bench.py recipe),
# one run per seed, shown and compared like a study's trials.
ROLES = ("trial", "teacher", "study", "reference")
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def load_runs(tracking_uri: str, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """Trial and teacher runs of the named studies (all studies when none) as one DataFrame.

    Columns as `mlflow.search_runs` gives them: run_id, experiment_id, status, start_time,
    tags.*, params.*, metrics.* (latest value of each metric). A database store is read with
    three plain queries (MLflow's ORM takes ~10 s for 2,000 runs); other stores via the MLflow API.
    """
    missing = _missing_sqlite_file(tracking_uri)
    if missing is not None:  # MLflow would silently create (and migrate) an empty database there
        raise ReportError(f"tracking store {tracking_uri}: no database file {missing} (run a study first, "
                          f"or pass --tracking-uri)")
    runs = _read_database(tracking_uri)
    if runs is None:
        runs = _search_runs_api(tracking_uri)
    return _select(runs, studies, f"tracking store {tracking_uri}")


def load_records(path: Path, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """The same frame as `load_runs`, read from committed run records (`distill-lab records export`)."""
    from distill_lab.records import RecordsError, export_paths, runs_frame

    try:
        runs = runs_frame(export_paths(path))
    except RecordsError as err:
        raise ReportError(str(err)) from None
    if not runs.empty and "tags.role" in runs:
        runs = runs[runs["tags.role"].isin(ROLES)]
    return _select(runs, studies, f"run records {path}")


def _select(runs: pd.DataFrame, studies: Sequence[str] | None, where: str) -> pd.DataFrame:
    if runs.empty or "tags.study" not in runs:
        raise ReportError(f"{where} has no distill-lab runs: run a study first")
    known = sorted(runs["tags.study"].dropna().unique())
    if studies:
        unknown = sorted(set(studies) - set(known))
        if unknown:
            raise UnknownStudyError(f"no study named {', '.join(unknown)} in {where}; studies there: "
                                    f"{', '.join(known) or 'none'}")
        runs = runs[runs["tags.study"].isin(studies)]
    return runs.reset_index(drop=True)


def _missing_sqlite_file(tracking_uri: str) -> str | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:") or Path(path).exists():
        return None
    return path


def _search_runs_api(tracking_uri: str) -> pd.DataFrame:
    """The runs with a distill-lab role through the MLflow API (any store: server, file, database)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
    except Exception as err:  # noqa: BLE001 - an unreachable store is a user problem
        raise ReportError(f"tracking store {tracking_uri}: {str(err).splitlines()[0]}") from err
    if not experiments:
        raise ReportError(f"tracking store {tracking_uri} has no experiments: run a study first")
    import contextlib

    import mlflow

    try:  # mlflow.search_runs has no uri argument: point the global at the store only meanwhile
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # pragma: no cover - older/newer MLflow: set it for good, as before
        _use_tracking_uri = lambda uri: contextlib.nullcontext(mlflow.set_tracking_uri(uri))  # noqa: E731
    frames = []
    environment = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri also (un)sets this variable
    try:
        with _use_tracking_uri(tracking_uri):
            for role in ROLES:
                frame = mlflow.search_runs(experiment_ids=experiments, filter_string=f"tags.role = '{role}'",
                                           output_format="pandas", max_results=200_000)
                if not frame.empty:
                    frames.append(frame)
    finally:
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_database(tracking_uri: str) -> pd.DataFrame | None:
    """The same frame as `_search_runs_api`, read straight from MLflow's tables; None: use the API.

    MLflow's schema for runs, tags, params and latest_metrics has been stable since MLflow 1.x; any
    surprise (another backend, a workspace-scoped store, a missing table) falls back to the API.
    """
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in SQL_SCHEMES or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        return None
    try:
        import sqlalchemy
    except ImportError:
        return None
    roles = ", ".join(f"'{role}'" for role in ROLES)
    selected = (
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        f"JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'role' AND t.value IN ({roles}) "
        "WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'")
    try:
        engine = sqlalchemy.create_engine(tracking_uri)
    except Exception:  # noqa: BLE001 - e.g. a driver missing: the API knows better
        return None
    try:
        with engine.connect() as connection:
            read = lambda query: pd.read_sql_query(sqlalchemy.text(query), connection)  # noqa: E731
            info = read("SELECT r.run_uuid AS run_id, r.experiment_id, r.status, r.start_time, r.end_time, "
                        f"r.artifact_uri FROM runs r WHERE r.run_uuid IN ({selected})")
            tags = read(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})")
            params = read(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})")
            metrics = read(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({selected})")
    except Exception:  # noqa: BLE001 - unexpected schema or store: let the API read (or report) it
        return None
    finally:
        engine.dispose()
    if info.empty:
        return pd.DataFrame()
    metrics["value"] = pd.to_numeric(metrics["value"], errors="coerce").astype(float)
    metrics.loc[metrics["is_nan"].astype(bool), "value"] = float("nan")
    frame = info.assign(experiment_id=info["experiment_id"].astype(str))
    for time_column in ("start_time", "end_time"):
        frame[time_column] = pd.to_datetime(frame[time_column], unit="ms", utc=True)
    wide = [frame.set_index("run_id")]
    for prefix, values in (("metrics", metrics), ("params", params), ("tags", tags)):
        if not values.empty:
            table = values.drop_duplicates(["run_uuid", "key"], keep="last").pivot(
                index="run_uuid", columns="key", values="value")
            table.columns = [f"{prefix}.{key}" for key in table.columns]
            wide.append(table.astype(float) if prefix == "metrics" else table.infer_objects())
    runs = pd.concat(wide, axis=1, join="outer")
    runs = runs[runs.index.isin(info["run_id"])]
    runs = runs.rename_axis("run_id").reset_index()
    return runs.sort_values(["start_time", "run_id"], ascending=[False, True]).reset_index(drop=True)


def seed_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (finished trial run, seed) with its best dev F1 and test F1."""
    trials = runs[runs["tags.role"].isin(("trial", "reference")) & (runs["status"] == "FINISHED")]
    if "tags.optuna_state" in trials:
        trials = trials[(trials["tags.optuna_state"] == "COMPLETE") | (trials["tags.role"] == "reference")]
    if trials.empty:
        return pd.DataFrame(columns=["run_id", "seed", "dev_f1", "test_f1"])
    dev_columns = [c for c in trials.columns if re.fullmatch(r"metrics\.dev_f1_seed-?\d+", c)]
    long = trials.melt(id_vars=["run_id"], value_vars=dev_columns, var_name="column", value_name="dev_f1")
    long = long.dropna(subset=["dev_f1"])
    long["seed"] = long["column"].str.extract(r"seed(-?\d+)$", expand=False).astype(int)
    test = trials.melt(id_vars=["run_id"], value_vars=[c.replace("dev_f1", "test_f1") for c in dev_columns
                                                       if c.replace("dev_f1", "test_f1") in trials],
                       var_name="column", value_name="test_f1")
    test["seed"] = test["column"].str.extract(r"seed(-?\d+)$", expand=False).astype(int)
    long = long.merge(test[["run_id", "seed", "test_f1"]], on=["run_id", "seed"], how="left")
    columns = {
        "tags.study": "study", "tags.teacher": "teacher", "tags.student_model": "student_model",
        "tags.setting": "setting", "tags.init": "init", "tags.mapping": "mapping", "tags.diagnosis": "diagnosis",
        "metrics.teacher_dev_f1": "teacher_dev_f1", "metrics.student_params": "student_params",
        "metrics.compression": "compression", "params.distill.temperature": "temperature",
        "params.distill.alpha_soft": "alpha_soft", "params.distill.alpha_hidden": "alpha_hidden",
        "params.distill.alpha_attention": "alpha_attention",
    }
    meta = trials[["run_id", *[c for c in columns if c in trials]]].rename(columns=columns)
    for name in columns.values():  # runs of older versions may lack a tag: keep the column
        if name not in meta:
            meta[name] = float("nan") if name in ("teacher_dev_f1", "student_params", "compression") else None
    for name in ("alpha_soft", "alpha_hidden", "alpha_attention"):
        meta[name] = pd.to_numeric(meta[name], errors="coerce")
    if "tags.student" in trials:
        meta["student_model"] = meta["student_model"].fillna(trials["tags.student"].str.split(",").str[0])
    rows = long.drop(columns="column").merge(meta, on="run_id", how="left")
    if "temperature" in rows:
        rows["temperature"] = pd.to_numeric(rows["temperature"], errors="coerce")
    return rows


def experiment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Grouped numeric table: one row per (study, teacher/student, setting, init) plus teacher rows."""
    rows = seed_rows(runs)
    tables = []
    if not rows.empty:
        rows = rows.assign(pair="T: " + rows["teacher"].fillna("?") + ", S: " + rows["student_model"].fillna("?"))
        grouped = rows.groupby(GROUP_KEYS, dropna=False)
        table = grouped.agg(
            dev_f1_mean=("dev_f1", "mean"), dev_f1_std=("dev_f1", "std"), n=("dev_f1", "size"),
            test_f1_mean=("test_f1", "mean"), test_f1_std=("test_f1", "std"),
            teacher_dev_f1=("teacher_dev_f1", "mean"), student_params=("student_params", "first"),
            compression=("compression", "first"),
        ).reset_index()
        table = table.merge(_most_common(rows, "diagnosis"), on=GROUP_KEYS, how="left")
        table = table.merge(_run_ids(rows), on=GROUP_KEYS, how="left")
        table["diagnosis"] = table["diagnosis"].fillna("")
        # A teacher at 0 F1 has nothing to retain: no ratio, and its students' diagnosis says why.
        table["retention"] = (table["dev_f1_mean"] / table["teacher_dev_f1"]).where(table["teacher_dev_f1"] > 0)
        table.loc[table["teacher_dev_f1"] <= 0, "diagnosis"] = "teacher at 0 F1: nothing to distil"
        table["reference"] = False
        tables.append(table)
    teachers = runs[(runs["tags.role"] == "teacher") & (runs["status"] == "FINISHED")]
    if not teachers.empty:
        reference = pd.DataFrame({
            "study": teachers["tags.study"], "pair": "T: " + teachers["tags.teacher"] + " (teacher, reference)",
            "setting": "fine-tuned on gold labels", "init": "pretrained weights",
            "dev_f1_mean": teachers["metrics.dev_f1"], "dev_f1_std": float("nan"), "n": 1,
            "test_f1_mean": teachers["metrics.test_f1"], "test_f1_std": float("nan"),
            "teacher_dev_f1": teachers["metrics.dev_f1"], "student_params": teachers["metrics.teacher_params"],
            "compression": 1.0, "diagnosis": "", "retention": 1.0, "reference": True,
            "runs": teachers["run_id"].str[:RUN_ID_CHARS],
        })
        reference = reference.drop_duplicates(subset=["study", "pair", "dev_f1_mean"])
        tables.append(reference)
    if not tables:
        raise ReportError("no finished trial runs to report yet")
    table = pd.concat(tables, ignore_index=True)
    table["dev_f1_std"] = table["dev_f1_std"].fillna(0.0)
    table["test_f1_std"] = table["test_f1_std"].fillna(0.0)
    return table.sort_values(["study", "reference", "dev_f1_mean"], ascending=[True, False, False]).reset_index(drop=True)


def _run_ids(rows: pd.DataFrame) -> pd.DataFrame:
    """Per group, the (shortened) ids of the MLflow runs behind its score: a cell leads to its runs."""
    ids = rows[[*GROUP_KEYS, "run_id"]].drop_duplicates().sort_values("run_id")
    ids = ids.assign(run_id=ids["run_id"].str[:RUN_ID_CHARS])
    return ids.groupby(GROUP_KEYS, dropna=False)["run_id"].agg(" ".join).rename("runs").reset_index()


def _most_common(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per group, the most frequent non-missing value (ties: the smallest), like Series.mode().iat[0].

    Vectorised: a Python lambda per group took seconds for a few thousand groups.
    """
    counts = (rows.dropna(subset=[column]).groupby([*GROUP_KEYS, column], dropna=False).size()
              .rename("_count").reset_index())
    counts = counts.sort_values(["_count", column], ascending=[False, True], kind="stable")
    return counts.drop_duplicates(GROUP_KEYS)[[*GROUP_KEYS, column]]


def _pm(mean: float, std: float, n: int | None = None) -> str:
    # One seed has no spread: "± 0.00" would claim one.
    text = f"{mean * 100:.2f}" if n == 1 else f"{mean * 100:.2f} ± {std * 100:.2f}"
    return f"{text} (n={n})" if n is not None else text


def _params(count: float) -> str:
    return f"{count / 1e6:.1f}M" if count == count else "-"


def formatted(table: pd.DataFrame, lang: str = "en") -> pd.DataFrame:
    """Display strings with the practitioner's four columns first, then the extras."""
    headers = HEADERS[lang]
    extra = EXTRA_HEADERS_ZH if lang == "zh" else EXTRA_HEADERS
    view = pd.DataFrame({
        headers["pair"]: table["pair"],
        headers["setting"]: table["setting"],
        headers["init"]: table["init"],
        headers["score"]: [_pm(m, s, int(n)) for m, s, n in zip(table["dev_f1_mean"], table["dev_f1_std"], table["n"])],
        extra["test"]: [(f"{m * 100:.2f}" if n == 1 else _pm(m, s)) if m == m else "-"
                                for m, s, n in zip(table["test_f1_mean"], table["test_f1_std"], table["n"])],
        extra["retention"]: [f"{r * 100:.1f}%" if r == r and abs(r) != float("inf") else "-"
                                     for r in table["retention"]],
        extra["params"]: [_params(p) for p in table["student_params"]],
        extra["compression"]: [f"{c:.2f}x" if c == c else "-" for c in table["compression"]],
        extra["diagnosis"]: table["diagnosis"].fillna(""),
        extra["study"]: table["study"],
        extra["runs"]: table["runs"].fillna("") if "runs" in table else "",
    })
    return view


def render(table: pd.DataFrame, fmt: str = "markdown", lang: str = "en") -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    view = formatted(table, lang)
    if fmt == "html":
        return view.to_html(index=False, escape=True, border=0, classes="distill-lab-report")
    # Every cell is display text: number parsing only costs time (seconds for thousands of rows).
    return view.to_markdown(index=False, disable_numparse=True) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename: never a half-written file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ReportError(f"{path}: cannot write there ({directory} {problem})")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as err:
        raise ReportError(f"{path}: cannot write there ({err.strerror})") from None
    try:
        # newline="": the text's line endings are written as they are (no \n -> \r\n on Windows).
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        else:  # mkstemp creates 0600; a report is an ordinary file
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot write ({err.strerror})") from None


def update_regions(path: Path, render: Callable[[list[str] | None], str | None]) -> list[list[str] | None]:
    """Rewrite every report region of `path` with `render(its studies)`; other bytes stay as they were.

    `render` gets the region's `studies=` list (None for a plain region) and returns its new text,
    or None to keep the region as it is. Returns the study lists of the regions that were kept.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"--update {path}: file not found")
    try:
        original = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(f"--update {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ReportError(f"--update {path}: cannot read ({err.strerror})") from None
    pieces, kept, position = [], [], 0
    for begin in REGION_BEGIN.finditer(original):
        if begin.start() < position:  # a begin marker quoted inside the previous region's text
            continue
        end = original.find(END, begin.end())  # the END that follows this BEGIN
        if end < 0:
            break
        studies = begin.group(1).split(",") if begin.group(1) else None
        content = render(studies)
        pieces.append(original[position:begin.end()])
        if content is None:
            kept.append(studies)
            pieces.append(original[begin.end():end])
        else:
            pieces.append("\n" + content.rstrip("\n") + "\n")
        position = end
    if not pieces:
        raise ReportError(f"--update {path}: markers {BEGIN} ... {END} not found (add them where the table goes)")
    if len(kept) == len(pieces) // 2:
        names = sorted({name for studies in kept for name in studies or []})
        raise UnknownStudyError(f"--update {path}: no region could be regenerated: its studies "
                                f"({', '.join(names)}) are not in this tracking store")
    write_atomic(path, "".join(pieces) + original[position:])
    return kept


def temperature_sections(runs: pd.DataFrame, tracking_uri: str, *, log_to_parent: bool = True,
                         n_bootstrap: int = 2000) -> list[tuple[str, Any]]:
    """Per study that searched distill.temperature: its fit (and the PNG/JSON on the parent run)."""
    from distill_lab.analysis import fit_temperature, temperature_figure

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
                from mlflow.tracking import MlflowClient

                import matplotlib.pyplot as plt

                client = MlflowClient(tracking_uri)
                figure = temperature_figure(fit, f"{study}: dev F1 vs T")
                client.log_figure(parent, figure, "analysis/temperature_curve.png")
                plt.close(figure)
                client.log_dict(parent, fit.as_dict(), "analysis/temperature_fit.json")
    return results


@dataclass(frozen=True)
class GroupSection:
    """One study's comparison of one factor, within each stratum of the other arms it varied."""

    study: str
    factor: str  # mapping | init | setting
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
    from distill_lab.analysis import compare_groups

    rows = seed_rows(runs)
    sections: list[GroupSection] = []
    if rows.empty:
        return sections
    rows = rows.assign(kd=uses_teacher(rows))
    for study, group in rows.groupby("study"):
        searched = _searched(runs, study)
        factors = []
        if "distill.layer_mapping" in searched and group["mapping"].nunique() > 1:
            factors.append(("mapping", "uniform"))
        if searched & {"student.init", "student.init.strategy"} and group["init"].nunique() > 1:
            factors.append(("init", "pretrained weights"))
        plain = group.loc[~group["kd"], "setting"].dropna().unique()
        if len(plain) == 1 and group["kd"].any():
            factors.append(("setting", str(plain[0])))
        for factor, reference in factors:
            # A mapping is part of its setting label: neither is a stratum of the other.
            excluded = {factor} | ({"setting", "mapping"} if factor in ("setting", "mapping") else set())
            strata = [c for c in _ARM_COLUMNS if c not in excluded and group[c].nunique(dropna=False) > 1]
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


def _add_test_intervals(comparison: Any, stratum: pd.DataFrame) -> None:
    """Test F1 beside dev F1: each row gains test_mean, test_diff and its Welch interval."""
    from distill_lab.analysis import compare_groups

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
        for column in ("mean", "std", "diff", "ci_low", "ci_high", "test_mean", "test_diff", "test_ci_low",
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
    parents = runs[(runs["tags.role"] == "study") & (runs["tags.study"] == study)]
    return None if parents.empty else str(parents["run_id"].iloc[0])


def _searched(runs: pd.DataFrame, study: str) -> set[str]:
    parents = runs[(runs["tags.role"] == "study") & (runs["tags.study"] == study)]
    if parents.empty or "params.study.search_space" not in parents:
        return set()
    try:
        return set(json.loads(parents["params.study.search_space"].iloc[0] or "{}"))
    except (TypeError, ValueError):
        return set()


def _t_star_interval(interval: tuple[float, float] | None) -> str:
    if not interval:
        return "-"
    low, high = interval
    if low < 1e-6 or high > 1e6:  # many resamples have no maximum: the optimum runs off the axis
        return f"unbounded ([{low:.3g}, {high:.3g}]: many resamples have no interior maximum)"
    return f"[{low:.2f}, {high:.2f}]"


def analysis_markdown(runs: pd.DataFrame, tracking_uri: str, *, log_to_parent: bool = True) -> str:
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
                     f"by chance alone.\n")
    for section in sections:
        frame = section_frame(section)
        frame = frame.rename(columns={"diff": f"diff_vs_{section.reference}"})
        unreplicated = frame["within_noise"].isna().all()
        frame = frame.astype(object).where(frame.notna(), "-")
        note = "\nEvery group ran one seed: no noise estimate, so no interval and no verdict.\n" if unreplicated else ""
        within = f", within each {' / '.join(section.strata)}" if section.strata else ""
        parts.append(f"### {section.study}: dev F1 by {titles[section.factor]}{within} "
                     f"(vs {section.reference}, F1 points)\n\n{frame.to_markdown(index=False)}\n{note}")
    return "\n".join(parts) if parts else ("_nothing to analyse: no study has 3 or more distinct temperatures, "
                                           "searched mappings or init strategies, or a no-KD arm beside KD arms_\n")
