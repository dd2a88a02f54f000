"""bench.reproduce_check: published vs regenerated report regions, row by row."""

from __future__ import annotations

import pytest

from bench import reproduce_check

HEADER = ("| teacher / student | setting | init | score (dev F1) | test F1 | retention | study |\n"
          "|:--|:--|:--|:--|:--|:--|:--|\n")


def region(rows: list[str], studies: str = "a") -> str:
    return (f"text before\n<!-- distill-lab:report:begin studies={studies} -->\n{HEADER}" + "\n".join(rows)
            + "\n\n### analysis\n\n| x | y |\n|--|--|\n| 1 | 2 |\n<!-- distill-lab:report:end -->\nafter\n")


def row(setting: str, dev: str, test: str, init: str = "pretrained weights", study: str = "a") -> str:
    return f"| T: big, S: small | {setting} | {init} | {dev} | {test} | 90.0% | {study} |"


def test_rows_within_and_outside_the_published_std(tmp_path):
    published = tmp_path / "published.md"
    regenerated = tmp_path / "regenerated.md"
    published.write_text(region([
        row("T=4", "80.00 ± 0.50 (n=3)", "70.00 ± 1.00"),
        row("T=8", "79.00 ± 0.20 (n=3)", "69.00 ± 0.30"),
        row("teacher", "85.00 ± 0.00 (n=1)", "75.00 ± 0.00"),
        row("T=16", "78.00 ± 0.20 (n=3)", "68.00 ± 0.30"),
    ]), encoding="utf-8")
    regenerated.write_text(region([
        row("T=4", "80.40 ± 0.45 (n=3)", "69.20 ± 1.10"),   # within both stds
        row("T=8", "79.50 ± 0.20 (n=3)", "69.10 ± 0.30"),   # dev 0.5 off a 0.2 std
        row("teacher", "85.00 ± 0.00 (n=1)", "75.01 ± 0.00"),  # identical up to rounding
        row("T=32", "77.00 ± 0.20 (n=3)", "67.00 ± 0.30"),  # a new arm
    ]), encoding="utf-8")
    out = tmp_path / "check.md"
    code = reproduce_check.main([str(published), str(regenerated), "--out", str(out)])
    assert code == 1
    both, unmatched = reproduce_check.compare(reproduce_check.report_rows(published.read_text()),
                                              reproduce_check.report_rows(regenerated.read_text()))
    verdicts = dict(zip(both["setting"], zip(both["dev_ok"], both["test_ok"])))
    assert verdicts == {"T=4": (True, True), "T=8": (False, True), "teacher": (True, True)}
    assert both.set_index("setting").loc["T=8", "dev_diff"] == pytest.approx(0.5)
    assert sorted(zip(unmatched["setting"], unmatched["_merge"])) == [("T=16", "left_only"), ("T=32", "right_only")]
    text = out.read_text()
    assert "2 of 3 rows within the published std on dev F1, 3 of 3 on test F1." in text
    assert "| +0.50 " in text and "published only" in text and "regenerated only" in text


def test_identical_files_pass(tmp_path):
    published = tmp_path / "p.md"
    published.write_text(region([row("T=4", "80.00 ± 0.50 (n=3)", "70.00 ± 1.00")]), encoding="utf-8")
    assert reproduce_check.main([str(published), str(published)]) == 0
