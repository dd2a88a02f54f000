"""docs/results.md is what `make report-records` rebuilds from the committed run records and
results/comparisons.yaml: a clean clone regenerates every record-backed region byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from distill_lab.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_report_records_rebuilds_the_committed_results_page_unchanged(tmp_path):
    page = tmp_path / "results.md"
    shutil.copy(ROOT / "docs" / "results.md", page)
    committed = page.read_text(encoding="utf-8")
    result = CliRunner().invoke(app, [
        "report", "--records", str(ROOT / "results" / "records"), "--analysis",
        "--comparisons", str(ROOT / "results" / "comparisons.yaml"), "--update", str(page)])
    assert result.exit_code == 0, result.output
    # Regions of studies run before records were committed are kept as they are; the others are rebuilt.
    assert "kept the region of headline_teacher" not in result.output and "updated the report regions" in result.output
    assert committed.count("<!-- distill-lab:report:begin comparisons=") >= 7
    assert page.read_text(encoding="utf-8") == committed
