"""Cross-study comparisons: the YAML file, the table's numbers, and the report region they fill."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from distill_lab.analysis import detectable_difference, welch_interval
from distill_lab.comparisons import Comparison, comparison_table, load_comparisons
from distill_lab.records import ReportError, export_experiment
from fake_runs import log_fake_study, new_store


def _rows() -> pd.DataFrame:
    frame = []
    for study, setting, init, devs, tests, run in (
            ("a", "T=8 a=0.2/0.8/0", "pretrained weights", [0.90, 0.91, 0.92], [0.85, 0.86, 0.84], "runA" * 8),
            ("b", "T=1 a=1/0/0", "fine-tuned teacher weights", [0.88, 0.885, 0.89], [0.83, 0.84, 0.835], "runB" * 8),
            ("b", "T=1 a=1/0/0", "pretrained weights", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], "runC" * 8)):
        for seed, (dev, test) in enumerate(zip(devs, tests), start=1):
            frame.append({"study": study, "setting": setting, "init": init, "seed": seed, "dev_f1": dev,
                          "test_f1": test, "run_id": run})
    return pd.DataFrame(frame)


def test_the_table_has_each_pairs_welch_interval_power_and_runs():
    table = comparison_table(_rows(), [Comparison("a vs b", "a/T=8 a=0.2/0.8/0",
                                                  "b/T=1 a=1/0/0@fine-tuned teacher weights")])
    row = [line for line in table.splitlines() if line.startswith("| a vs b")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    dev, base = np.array([90.0, 91.0, 92.0]), np.array([88.0, 88.5, 89.0])
    low, high = welch_interval(dev, base)
    assert cells[1] == f"{dev.mean() - base.mean():+.2f} [{low:+.2f}, {high:+.2f}]" == "+2.50 [" + f"{low:+.2f}, {high:+.2f}]"
    assert cells[2] == f"{detectable_difference(dev, base):.2f}"
    test_low, test_high = welch_interval(np.array([85.0, 86.0, 84.0]), np.array([83.0, 84.0, 83.5]))
    assert cells[3] == f"+1.50 [{test_low:+.2f}, {test_high:+.2f}]"
    assert cells[4] == "3 / 3" and cells[5] == "`runArunA` / `runBrunB`"
    assert "From `a`, `b`" in table


def test_an_arm_that_matches_no_or_several_runs_names_the_studys_cells():
    with pytest.raises(ReportError, match=r"arm 'b/T=1 a=1/0/0': 6 seed rows of 2 runs match .*"
                                          r"T=1 a=1/0/0@fine-tuned teacher weights, T=1 a=1/0/0@pretrained weights"):
        comparison_table(_rows(), [Comparison("x", "b/T=1 a=1/0/0", "a/T=8 a=0.2/0.8/0")])
    with pytest.raises(ReportError, match=r"arm 'a/T=4 a=0.2/0.8/0': 0 seed rows"):
        comparison_table(_rows(), [Comparison("x", "a/T=4 a=0.2/0.8/0", "a/T=8 a=0.2/0.8/0")])


@pytest.mark.parametrize("text, message", [
    ("- just a list\n", "expected a mapping of group name"),
    ("g: []\n", "group 'g' must be a non-empty list"),
    ("g:\n  - {label: x, arm: a/s}\n", "group 'g' entry 1: needs exactly the keys label, arm, base"),
    ("g:\n  - {label: x, arm: no-slash, base: a/s}\n", "entry 1: arm must be 'study/setting'"),
    ("g: [unclosed\n", "not YAML"),
])
def test_a_malformed_comparisons_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "comparisons.yaml"
    path.write_text(text)
    with pytest.raises(ReportError, match=message):
        load_comparisons(path)


def _call(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from distill_lab import cli

    monkeypatch.setattr(sys, "argv", ["distill-lab", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_update_fills_a_comparisons_region_from_run_records(tmp_path, monkeypatch, capsys):
    uri = new_store(tmp_path / "store")
    first = log_fake_study(uri, "first", temperatures=(4,), inits=["teacher"], rng_seed=5)
    second = log_fake_study(uri, "second", temperatures=(4,), inits=["pretrained"], init_effect={"pretrained": -0.02},
                            rng_seed=6)
    for name in ("first", "second"):
        export_experiment(name, uri, tmp_path / "records")
    arm, base = (f"{study.name}/{study.values['setting'][0]}" for study in (second, first))
    (tmp_path / "comparisons.yaml").write_text(f"pairs:\n  - {{label: second vs first, arm: '{arm}', base: '{base}'}}\n")
    doc = tmp_path / "results.md"
    region = "<!-- distill-lab:report:begin comparisons=pairs -->\nold\n<!-- distill-lab:report:end -->\n"
    doc.write_text("# Results\n\n" + region + "tail\n", encoding="utf-8")
    code, _, err = _call(monkeypatch, capsys, "report", "--records", str(tmp_path / "records"), "--comparisons",
                         str(tmp_path / "comparisons.yaml"), "--update", str(doc))
    assert code == 0, err
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\n<!-- distill-lab:report:begin comparisons=pairs -->\n| comparison |")
    assert text.endswith("<!-- distill-lab:report:end -->\ntail\n") and "old" not in text
    expected = (second.values["dev_f1"].mean() - first.values["dev_f1"].mean()) * 100
    row = [line for line in text.splitlines() if line.startswith("| second vs first")][0]
    assert row.split("|")[2].strip().startswith(f"{expected:+.2f} [")
    assert f"`{second.trial_run_ids[0][:8]}` / `{first.trial_run_ids[0][:8]}`" in row
    # Without --comparisons the region is kept as it is; a group the file lacks is one error line.
    code, _, _ = _call(monkeypatch, capsys, "report", "--records", str(tmp_path / "records"), "--update", str(doc))
    assert code == 2 and doc.read_text(encoding="utf-8") == text  # nothing else to regenerate: said, not written
    (tmp_path / "comparisons.yaml").write_text(f"other:\n  - {{label: x, arm: '{arm}', base: '{base}'}}\n")
    code, _, err = _call(monkeypatch, capsys, "report", "--records", str(tmp_path / "records"), "--comparisons",
                         str(tmp_path / "comparisons.yaml"), "--update", str(doc))
    assert code == 2 and "region comparisons=pairs is not a group of" in err
    code, _, err = _call(monkeypatch, capsys, "report", "--comparisons", str(tmp_path / "comparisons.yaml"))
    assert code == 2 and "use it with --update FILE" in err
