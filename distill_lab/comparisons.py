"""Comparisons between arms of DIFFERENT studies, named in a committed file and rebuilt by the report.

The report's own group comparisons stay inside one study. Studies that share a teacher (the same
fingerprint) are compared across studies too: the init factorial's cells, an arm against another
study's baseline. Those pairs are listed in a YAML file (`results/comparisons.yaml`):

    init_factorial:                       # a group: one table, one report region
      - label: "source alone, no KD: pretrained vs teacher (both first 3)"
        arm: "headline_init_source/T=1 a=1/0/0"           # study/setting, or study/setting@init
        base: "headline_teacher/T=1 a=1/0/0"

and a document region `<!-- distill-lab:report:begin comparisons=init_factorial -->` is rebuilt
from the run records (or a store) by `distill-lab report --update FILE --comparisons FILE`: for
each pair the mean difference in dev and test F1 (F1 points) with its 95 % Welch interval over the
two arms' seeds, the smallest difference the seeds detect with 80 % power, and both arms' runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from distill_lab.analysis import detectable_difference, welch_interval
from distill_lab.records import ReportError


@dataclass(frozen=True)
class Comparison:
    label: str
    arm: str
    base: str

    def studies(self) -> set[str]:
        return {self.arm.partition("/")[0], self.base.partition("/")[0]}


def load_comparisons(path: Path) -> dict[str, list[Comparison]]:
    """The groups of `path`; a malformed file is one ReportError line naming what is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ReportError(f"--comparisons {path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ReportError(f"--comparisons {path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ReportError(f"--comparisons {path}: expected a mapping of group name -> list of "
                          "{label, arm, base}")
    return {str(name): [_comparison(path, name, index, entry) for index, entry in enumerate(_list(path, name, entries))]
            for name, entries in data.items()}


def _list(path: Path, name: Any, entries: Any) -> list[Any]:
    if not isinstance(entries, list) or not entries:
        raise ReportError(f"--comparisons {path}: group {name!r} must be a non-empty list of {{label, arm, base}}")
    return entries


def _comparison(path: Path, name: Any, index: int, entry: Any) -> Comparison:
    where = f"--comparisons {path}: group {name!r} entry {index + 1}"
    if not isinstance(entry, dict) or set(entry) != {"label", "arm", "base"}:
        raise ReportError(f"{where}: needs exactly the keys label, arm, base")
    for key in ("arm", "base"):
        if not isinstance(entry[key], str) or "/" not in entry[key]:
            raise ReportError(f"{where}: {key} must be 'study/setting' or 'study/setting@init', got {entry[key]!r}")
    return Comparison(str(entry["label"]), entry["arm"], entry["base"])


def arm_seeds(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """The per-seed rows (dev_f1, test_f1, run_id) of `study/setting[@init]`, one per seed."""
    study, _, rest = arm.partition("/")
    setting, _, init = rest.rpartition("@")
    if init not in set(rows.loc[rows["study"] == study, "init"]):  # an '@' of the setting (soft@subtokens)
        setting, init = rest, ""
    chosen = rows[(rows["study"] == study) & (rows["setting"] == setting)]
    if init:
        chosen = chosen[chosen["init"] == init]
    # One trial run holds every seed; a reference recipe (TextBrewer's) is one run per seed.
    if chosen.empty or chosen["seed"].duplicated().any():
        mine = rows["study"] == study
        options = sorted(set(rows.loc[mine, "setting"] + "@" + rows.loc[mine, "init"]))
        raise ReportError(f"comparison arm {arm!r}: {len(chosen)} seed rows of {chosen['run_id'].nunique()} runs "
                          f"match (this study's setting@init: {', '.join(options) or 'none'})")
    return chosen.sort_values("seed")


def _interval(values: np.ndarray, base: np.ndarray) -> str:
    low, high = welch_interval(values, base)
    return f"{values.mean() - base.mean():+.2f} [{low:+.2f}, {high:+.2f}]"


def _runs(chosen: pd.DataFrame) -> str:
    return ", ".join(f"`{run[:8]}`" for run in dict.fromkeys(chosen["run_id"]))


def comparison_table(rows: pd.DataFrame, comparisons: list[Comparison]) -> str:
    """The markdown table of `comparisons` from per-seed rows (`report_table.seed_rows`)."""
    lines = ["| comparison | dev F1 diff [95 % Welch] | mde80 | test F1 diff [95 % Welch] | seeds | runs (arm / base) |",
             "|---|---|---|---|---|---|"]
    for item in comparisons:
        arm, base = arm_seeds(rows, item.arm), arm_seeds(rows, item.base)
        dev, base_dev = arm["dev_f1"].to_numpy() * 100, base["dev_f1"].to_numpy() * 100
        test, base_test = arm["test_f1"].to_numpy() * 100, base["test_f1"].to_numpy() * 100
        lines.append(f"| {item.label} | {_interval(dev, base_dev)} | {detectable_difference(dev, base_dev):.2f} | "
                     f"{_interval(test, base_test)} | {len(dev)} / {len(base_dev)} | {_runs(arm)} / {_runs(base)} |")
    return "\n".join(lines) + "\n\nFrom `" + "`, `".join(sorted({s for c in comparisons for s in c.studies()})) + \
        "` (pairs of arms across studies; 95 % Welch intervals over seeds, none corrected for multiplicity).\n"
