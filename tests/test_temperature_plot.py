"""dev F1 vs temperature drawn from committed run records, with a one-arm study (the no-KD twin) as a line."""

from __future__ import annotations

import pytest

from distill_lab.cli import app
from distill_lab.records import ReportError, export_experiment
from distill_lab.report_analysis import temperature_plot
from fake_runs import concave_score, log_fake_study, new_store


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = tmp_path_factory.mktemp("temperature")
    uri = new_store(directory / "store")
    grid = log_fake_study(uri, "grid", temperatures=(1, 2, 4, 8, 16), score=concave_score(4.0, peak=0.86),
                          rng_seed=3)
    twin = log_fake_study(uri, "twin", temperatures=(1,), score=lambda t: 0.84, rng_seed=4)
    both = log_fake_study(uri, "two_arms", temperatures=(1, 8), rng_seed=5)
    for name in ("grid", "twin", "two_arms"):
        export_experiment(name, uri, directory / "records")
    return directory / "records", grid, twin, both


def test_the_plot_has_the_fit_and_the_baselines_mean_and_std(records, tmp_path):
    path, grid, twin, _ = records
    out = tmp_path / "img" / "t.png"
    fit, baseline = temperature_plot(path, "grid", out, baseline="twin", n_bootstrap=200)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fit.temperatures == [1.0, 2.0, 4.0, 8.0, 16.0] and fit.counts == [3] * 5
    expected = grid.values.groupby("temperature")["dev_f1"].mean()
    assert fit.means == pytest.approx(expected.tolist(), abs=1e-6)
    assert baseline.seeds == 3
    assert baseline.mean == pytest.approx(twin.values["dev_f1"].mean(), abs=1e-6)
    assert baseline.std == pytest.approx(twin.values["dev_f1"].std(ddof=1), abs=1e-6)  # scores logged to 6 digits
    assert baseline.label.startswith("twin (T=1 ")


def test_the_command_prints_each_temperature_against_the_baseline(records, tmp_path, capsys):
    path, grid, twin, _ = records
    out = tmp_path / "t.png"
    assert app(["records", "temperature", str(path), "--study", "grid", "--baseline", "twin", "--out", str(out)],
               standalone_mode=False) in (0, None)
    printed = capsys.readouterr().out
    rows = grid.values[grid.values["temperature"] == 4]["dev_f1"]
    diff = 100 * (rows.mean() - twin.values["dev_f1"].mean())
    assert f"T=4: {rows.mean() * 100:.2f} ± {rows.std(ddof=1) * 100:.2f} (n=3), {diff:+.2f} vs baseline" in printed
    assert "verdict: " in printed and out.exists()


def test_a_study_without_a_temperature_grid_or_a_many_armed_baseline_is_refused(records, tmp_path):
    path, *_ = records
    with pytest.raises(ReportError, match="study 'twin': its records hold no search over 3 or more temperatures"):
        temperature_plot(path, "twin", tmp_path / "x.png")
    with pytest.raises(ReportError, match="--baseline two_arms: needs finished runs of exactly one arm, found 2"):
        temperature_plot(path, "grid", tmp_path / "x.png", baseline="two_arms")
    assert not (tmp_path / "x.png").exists()
