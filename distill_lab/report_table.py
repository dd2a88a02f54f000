"""The practitioner's experiment table, rebuilt from tracked runs with pandas.

Runs come from `distill_lab.records` (the frame `mlflow.search_runs` gives); seeds are exploded to
one row each from the per-seed metrics, grouped by (teacher, student, setting, init) and
aggregated to mean ± std.
Scores are the BEST dev F1 of each run (logged as `dev_f1_seed<N>` / `best_dev_f1`), never the
last step's value.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from distill_lab.diagnosis import weak_teacher
from distill_lab.record_schema import TeacherRecord, TrialRecord
from distill_lab.records import ReportError, UnknownStudyError

BEGIN = "<!-- distill-lab:report:begin -->"
END = "<!-- distill-lab:report:end -->"
# A region may name its studies: <!-- distill-lab:report:begin studies=a,b -->. One document can then
# hold several regions, each regenerated from its own studies' runs (e.g. from separate stores).
# <!-- distill-lab:report:begin comparisons=group --> holds a group of cross-study comparisons.
REGION_BEGIN = re.compile(r"<!-- distill-lab:report:begin(?: (studies|comparisons)=([\w.-]+(?:,[\w.-]+)*))? -->")
GROUP_KEYS = ["study", "pair", "setting", "init"]
HEADERS = {
    "en": {"pair": "teacher / student", "setting": "setting", "init": "init", "score": "score (dev F1)"},
    "zh": {"pair": "模型的参数选取", "setting": "蒸馏设定", "init": "初始化方式", "score": "产出模型表现"},
}
EXTRA_HEADERS = {"test": "test F1", "retention": "retention", "params": "student params",
                 "compression": "compression", "speedup": "speedup", "diagnosis": "diagnosis", "study": "study",
                 "runs": "MLflow runs"}
EXTRA_HEADERS_ZH = {"test": "测试集 F1", "retention": "保留率", "params": "学生参数量", "compression": "压缩比",
                    "speedup": "推理加速比",
                    "diagnosis": "诊断", "study": "实验", "runs": "MLflow 运行"}
RUN_ID_CHARS = 8  # a prefix that finds the run in the MLflow UI's search and in results/records


# Sampled parameters another column already names: the setting (distill.*, the data options), the
# init, the student's model and depth (student_model), the precision (below).
NAMED_PARAMS = ("distill", "student.init", "student.model", "student.num_layers", "student.from_teacher.num_layers",
                "data.transfer", "data.augment", "data.corrupt", "training.precision")


def seed_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (finished trial run, seed) with its best dev F1 and test F1.

    Where a study ran arms in more than one precision, the setting says which; where it searched a
    parameter no column names (a learning rate, epochs, a student width), the setting gains
    `name=value` for each one its trials differ in. Arms would otherwise share one setting label, and
    one table row would average different arms as if they were seeds.
    """
    rows = TrialRecord.from_runs(runs)
    if rows.empty:
        return rows
    rows["setting"] = rows["setting"] + _unnamed_labels(rows)
    rows["diagnosis"] = rediagnose(rows)
    if "precision" not in rows or rows["precision"].isna().all():
        return rows
    mixed = rows.groupby("study")["precision"].transform("nunique") > 1
    rows.loc[mixed, "setting"] = rows.loc[mixed, "setting"] + " " + rows.loc[mixed, "precision"]
    return rows


def rediagnose(rows: pd.DataFrame) -> pd.Series:
    """Each seed row's diagnosis, with the rules that its recorded metrics alone decide applied again.

    A run records its diagnosis when it ends; a rule added later (weak-teacher: a student that learns
    from the teacher's outputs on the teacher's own training text, above it on dev) would leave older
    records tagged "ok" beside newer ones that the same rule flags. The other rules need what a record
    does not keep (the train-sample F1, the predicted types), so only "ok" and "weak-teacher" (the last
    rule, reached only when the others passed) are decided again, both ways.
    """
    diagnosis = rows["diagnosis"].copy() if "diagnosis" in rows else pd.Series(pd.NA, index=rows.index, dtype=object)
    if "teacher_dev_f1" not in rows:
        return diagnosis
    weights = [rows[column].fillna(0) for column in ("alpha_soft", "alpha_hidden", "alpha_attention") if column in rows]
    distils = sum(weights) > 0 if weights else pd.Series(False, index=rows.index)
    if "transfer_ratio" in rows:  # soft labels on text the teacher never fitted: above it is the point
        distils &= rows["transfer_ratio"].isna()
    decided = diagnosis.isin(["ok", "weak-teacher"])
    weak = weak_teacher(rows["dev_f1"], rows["teacher_dev_f1"], distils)
    diagnosis[decided & weak] = "weak-teacher"
    diagnosis[decided & ~weak] = "ok"
    return diagnosis


def unnamed_params(sampled: Any, named: tuple[str, ...] = NAMED_PARAMS) -> dict[str, str]:
    """A trial's sampled parameters (the `optuna.params` JSON) that `named` prefixes leave out, as text."""
    try:
        params = json.loads(sampled) if isinstance(sampled, str) else {}
    except json.JSONDecodeError:
        return {}
    return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in params.items() if not key.startswith(named)}


def _unnamed_labels(rows: pd.DataFrame) -> pd.Series:
    """' lr=5e-05 epochs=6' per row: the unnamed sampled values its study's trials differ in."""
    labels = pd.Series("", index=rows.index)
    if "sampled" not in rows:
        return labels
    parsed = {text: unnamed_params(text) for text in rows["sampled"].dropna().unique()}  # once per trial, not per seed
    params = rows["sampled"].map(lambda text: parsed.get(text, {}))
    for _, index in rows.groupby("study").groups.items():
        study_params = params.loc[index]
        keys = set().union(*study_params)
        varying = sorted(key for key in keys if study_params.map(lambda p, key=key: p.get(key)).nunique(dropna=False) > 1)
        if varying:
            labels.loc[index] = study_params.map(
                lambda p: "".join(f" {key.rsplit('.', 1)[-1]}={p.get(key, '?')}" for key in varying))
    return labels


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
            compression=("compression", "first"), speedup=("speedup", "median"),
        ).reset_index()
        table = table.merge(_most_common(rows, "diagnosis"), on=GROUP_KEYS, how="left")
        table = table.merge(_run_ids(rows), on=GROUP_KEYS, how="left")
        table["diagnosis"] = table["diagnosis"].fillna("")
        # A teacher at 0 F1 has nothing to retain: no ratio, and its students' diagnosis says why.
        table["retention"] = (table["dev_f1_mean"] / table["teacher_dev_f1"]).where(table["teacher_dev_f1"] > 0)
        table.loc[table["teacher_dev_f1"] <= 0, "diagnosis"] = "teacher at 0 F1: nothing to distil"
        table["reference"] = False
        tables.append(table)
    teachers = TeacherRecord.from_runs(runs)
    if not teachers.empty:
        reference = pd.DataFrame({
            "study": teachers["study"], "pair": "T: " + teachers["teacher"] + " (teacher, reference)",
            "setting": "fine-tuned on gold labels", "init": "pretrained weights",
            "dev_f1_mean": teachers["dev_f1"], "dev_f1_std": float("nan"), "n": 1,
            "test_f1_mean": teachers["test_f1"], "test_f1_std": float("nan"),
            "teacher_dev_f1": teachers["dev_f1"], "student_params": teachers["params"],
            "compression": 1.0, "speedup": 1.0, "diagnosis": "", "retention": 1.0, "reference": True,
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
        # Measured inference sentences/s, student / teacher (runs before this column show "-").
        extra["speedup"]: [f"{v:.2f}x" if v == v else "-" for v in table["speedup"]],
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


def update_regions(path: Path, render: Callable[[list[str] | None], str | None],
                   compare: Callable[[str], str | None] | None = None) -> list[list[str] | None]:
    """Rewrite every report region of `path` with `render(its studies)`; other bytes stay as they were.

    `render` gets the region's `studies=` list (None for a plain region) and returns its new text,
    or None to keep the region as it is; a `comparisons=` region goes to `compare(group)` (kept when
    there is none). Returns the study lists of the regions that were kept.
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
        studies = begin.group(2).split(",") if begin.group(2) else None
        if begin.group(1) == "comparisons":
            content = compare(studies[0]) if compare is not None else None
            studies = [f"comparisons={studies[0]}"]
        else:
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
