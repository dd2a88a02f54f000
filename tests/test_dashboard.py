"""The static study dashboard: a self-contained page, valid PNGs, and a real headless-browser render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fake_runs import concave_score, log_fake_study, new_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDY = "temperature_mapping"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A temperature x mapping study (9 T x 2 mappings x 3 seeds) and its dashboard."""
    from distill_lab.dashboard import build

    root = tmp_path_factory.mktemp("dashboard")
    uri = new_store(root / "store")
    log_fake_study(uri, STUDY, score=concave_score(t_star=5.0), mappings=["uniform", "last"],
                   mapping_effect={"last": -0.02}, rng_seed=3)
    out = root / "site"
    written = build(STUDY, uri, out)
    return out, written


def test_build_writes_page_and_pngs(dashboard):
    out, written = dashboard
    assert written["html"] == out / "index.html"
    assert {"html", "temperature_png", "mapping_png"} <= set(written)
    for key in ("temperature_png", "mapping_png"):
        data = written[key].read_bytes()
        assert data.startswith(PNG_MAGIC), key
        assert len(data) > 5_000, key  # a real plot, not an empty canvas
    assert "init_png" not in written  # a single init: no init comparison


def test_a_study_with_a_no_kd_arm_gets_one_box_per_init_and_setting(tmp_path):
    from distill_lab.dashboard import build

    uri = new_store(tmp_path / "store")
    log_fake_study(uri, "kd_vs_plain", temperatures=(6,), inits=["pretrained", "teacher"],
                   no_kd_effect={"pretrained": 0.0, "teacher": -0.03}, rng_seed=4)
    written = build("kd_vs_plain", uri, tmp_path / "site")
    assert {"arm_png", "init_png"} <= set(written)
    assert written["arm_png"].read_bytes().startswith(PNG_MAGIC) and written["arm_png"].stat().st_size > 5_000
    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    page = page.replace("\\u002f", "/")  # plotly's JSON escapes slashes
    assert "dev F1 by init | setting (no KD: a=1/0/0)" in page
    for arm in ("pretrained weights | T=1 a=1/0/0", "fine-tuned teacher weights | T=6 a=0.2/0.8/0"):
        assert arm in page


def test_page_is_self_contained(dashboard):
    out, _ = dashboard
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page), "the page loads a script from the network"
    assert not re.search(r"<link[^>]+href=[\"']?(https?:)?//", page), "the page loads a stylesheet from the network"
    assert page.count("Plotly.newPlot") == 4  # temperature, parallel coordinates, mapping, history
    assert page.count("<table") == 1
    assert len(page) < 7_000_000  # plotly.js (~4.7 MB) inlined once, not a second copy in a comment
    assert page.count('class="plotly-graph-div"') == page.count("Plotly.newPlot")
    assert "{{" not in page.split("<script", 1)[0]  # every template slot filled
    assert f"distill-lab — {STUDY}" in page
    assert "one interior optimum supported" in page
    assert 'class="dataframe distill-lab-report"' in page
    assert page.count("T: MiniLM-L6 (6 layers), S: MiniLM (3 layers)") == 18  # one row per trial setting


def test_temperature_annotations_use_log_axis_coordinates():
    # On a log axis plotly.js reads an annotation's x as log10(x) (shapes take the data value): an
    # annotation at x=T* sat at 10**T*, off the plot, and stretched the autoranged axis to reach it.
    import math

    from distill_lab.analysis import fit_temperature
    from distill_lab.dashboard import temperature_plot
    from fake_runs import concave_score
    import numpy as np
    import pandas as pd

    score = concave_score(t_star=5.0)
    rng = np.random.default_rng(0)
    temps = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24) for _ in range(3)]
    rows = pd.DataFrame({"temperature": temps, "dev_f1": [score(t) + rng.normal(0, 0.003) for t in temps]})
    fit = fit_temperature(rows["temperature"], rows["dev_f1"], n_bootstrap=500)
    figure = temperature_plot(fit, rows)
    assert figure.layout.xaxis.type == "log"
    annotations = {a.text: a for a in figure.layout.annotations}
    star = next(a for text, a in annotations.items() if text.startswith("T*="))
    assert star.x == pytest.approx(math.log10(fit.t_star))
    band = next(a for text, a in annotations.items() if "CI" in text)
    assert math.log10(fit.t_star_ci[0]) - 1e-9 <= band.x <= math.log10(fit.t_star_ci[1]) + 1e-9
    # The shapes stay in data coordinates.
    line = next(shape for shape in figure.layout.shapes if shape.type == "line")
    assert line.x0 == pytest.approx(fit.t_star)


# --------------------------------------------------------------------------- real browser
def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("DISTILL_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail("DISTILL_LAB_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH: the headless render check needs it (apt-get install chromium); "
                    "set DISTILL_LAB_REQUIRE_BROWSER=1 to make this a failure")
    return found


def _chromium_command(binary: str, profile: Path, *args: str) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,2400",
            "--virtual-time-budget=10000", *args]


@pytest.fixture(scope="module")
def rendered(dashboard, tmp_path_factory):
    """Screenshot and rendered DOM of index.html from headless Chromium (offline: file:// only)."""
    binary = _chromium()
    out, _ = dashboard
    work = tmp_path_factory.mktemp("chromium")
    url = (out / "index.html").resolve().as_uri()
    screenshot = work / "shot.png"
    # Both browsers side by side, each with its own empty profile.
    shot = subprocess.Popen(_chromium_command(binary, work / "profile-shot", f"--screenshot={screenshot}", url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dom = subprocess.Popen(_chromium_command(binary, work / "profile-dom", "--dump-dom", url),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dom_out, dom_err = dom.communicate(timeout=120)
        _, shot_err = shot.communicate(timeout=120)
    finally:
        for process in (shot, dom):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert screenshot.is_file(), f"chromium wrote no screenshot (rc={shot.returncode}): {shot_err[-2000:]}"
    assert dom.returncode == 0, dom_err[-2000:]
    return screenshot, dom_out


def test_browser_renders_plotly_svg(rendered):
    _, dom = rendered
    assert "distill-lab — " + STUDY in dom
    # Plotly draws each figure into <svg class="main-svg"> nodes: present only if the inlined
    # plotly.js ran (no network) and every Plotly.newPlot call succeeded.
    figures = dom.count('class="plotly-graph-div')
    assert figures >= 4
    assert dom.count('class="main-svg"') >= 2 * figures
    assert 'class="parcoords"' in dom or "parcoords" in dom
    # The log T axis spans the searched temperatures (1..24): annotations placed at 10**T* used to
    # stretch it to 100k, squeezing the curve into the left fifth of the plot.
    assert re.search(r">T\*=[0-9.]+<", dom), "the T* annotation is not drawn"
    assert not re.search(r">(1000|10k|100k)<", dom), "the temperature axis runs far past the searched range"
    assert "Experiment table" in dom


def test_browser_screenshot_is_not_blank(rendered):
    from PIL import Image, ImageStat

    screenshot, _ = rendered
    data = screenshot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(screenshot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2400)
        colours = rgb.getcolors(maxcolors=1 << 20)
        stddev = ImageStat.Stat(rgb).stddev
        top = rgb.crop((0, 0, 1200, 1200))
        top_colours = top.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, "the page rendered (nearly) one colour"
    assert max(stddev) > 20, f"pixel std {stddev}: a blank page"
    assert top_colours is not None and len(top_colours) > 100  # the plots, not just the table, are drawn


def test_dashboard_and_report_give_the_same_temperature_fit(tmp_path, monkeypatch):
    from distill_lab import dashboard
    from distill_lab.records import load_runs
    from distill_lab.report_analysis import temperature_sections

    uri = new_store(tmp_path / "store")
    log_fake_study(uri, STUDY, score=concave_score(t_star=5.0), rng_seed=7)
    drawn = []
    real_plot = dashboard.temperature_plot
    monkeypatch.setattr(dashboard, "temperature_plot", lambda fit, rows: drawn.append(fit) or real_plot(fit, rows))
    dashboard.build(STUDY, uri, tmp_path / "site")
    (_, reported), = temperature_sections(load_runs(uri, [STUDY]), uri, log_to_parent=False)
    (shown,) = drawn
    assert (shown.t_star, shown.t_star_ci, shown.curvature_ci, shown.verdict) == \
        (reported.t_star, reported.t_star_ci, reported.curvature_ci, reported.verdict)
    assert shown.bootstrap == reported.bootstrap == 2000
