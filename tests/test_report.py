"""`distill-lab report` on fake but realistic tracked runs: the table, its formats, --update, --analysis, errors.

The heavy end-to-end paths run the real command in a subprocess; format variants go through the
same entry point (`distill_lab.cli.main`) in-process, which is faster and sees the same code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from distill_lab import report_table as reporting
from distill_lab import report_analysis
from distill_lab import records as tracked
from fake_runs import FAKE_SPEEDUP, FakeStudy, concave_score, log_fake_study, log_unfinished_trial, new_store

EN = ["teacher / student", "setting", "init", "score (dev F1)"]
ZH = ["模型的参数选取", "蒸馏设定", "初始化方式", "产出模型表现"]
EXTRAS = ["test F1", "retention", "student params", "compression", "speedup", "diagnosis", "study", "MLflow runs"]
STUDY = len(EN) + EXTRAS.index("study")  # the study column of a markdown row
PAIR = "T: MiniLM-L6 (6 layers), S: MiniLM (3 layers)"
TEACHER_PAIR = "T: MiniLM-L6 (6 layers) (teacher, reference)"
SCORE = re.compile(r"^(\d+\.\d\d)(?: ± (\d+\.\d\d))? \(n=(\d+)\)$")  # one seed: no spread


class Store:
    def __init__(self, uri: str, studies: dict[str, FakeStudy]):
        self.uri = uri
        self.studies = studies

    @property
    def values(self) -> pd.DataFrame:
        return pd.concat([s.values.assign(study=name) for name, s in self.studies.items()], ignore_index=True)

    def expected(self) -> pd.DataFrame:
        """Mean/std/n of the BEST dev F1 per (study, setting, init), straight from what was logged."""
        return (self.values.groupby(["study", "setting", "init_name"])["dev_f1"]
                .agg(mean="mean", std="std", n="size").reset_index())


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("report_store")
    uri = new_store(root)
    studies = {
        # 9 temperatures x 3 seeds, optimum at T=5 (+ a failed and a pruned trial the report must skip).
        "temperature_convexity": log_fake_study(uri, "temperature_convexity", score=concave_score(t_star=5.0),
                                                rng_seed=0),
        # Every dev F1 curve peaks and then falls 3 points; no final "dev_f1 = best" point is logged,
        # so each run's latest dev_f1 is lower than its best.
        "layer_mapping": log_fake_study(uri, "layer_mapping", temperatures=(4,), mappings=["uniform", "last", "skip",
                                        "many_to_one"], mapping_effect={"last": -0.03}, last_dev_drop=0.03,
                                        ui_dev_f1=False, rng_seed=1),
        "init_strategy": log_fake_study(uri, "init_strategy", temperatures=(4,), inits=["teacher", "pretrained",
                                        "random"], init_effect={"pretrained": -0.01, "random": -0.2}, rng_seed=2),
    }
    log_unfinished_trial(uri, studies["temperature_convexity"], state="FAIL", status="FAILED")
    log_unfinished_trial(uri, studies["temperature_convexity"], state="PRUNED", status="FINISHED")
    return Store(uri, studies)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill_lab.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def call_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in-process: (exit code, stdout, stderr)."""
    from distill_lab import cli

    monkeypatch.setattr(sys, "argv", ["distill-lab", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert set("".join(cells[1])) <= set(":-"), "second table line is not the header separator"
    return cells[0], cells[2:]


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def commands(store, tmp_path_factory) -> SimpleNamespace:
    """Every real `distill-lab report` subprocess of this module, started together.

    Each one pays ~2 s of interpreter start-up and imports; run side by side they cost about one.
    The tests below check their results (and the files they were pointed at) one by one.
    """
    work = tmp_path_factory.mktemp("cli")
    paths = SimpleNamespace(
        no_markers=work / "no_markers" / "README.md", no_markers_bytes="# Notes\r\n\nno markers here — ü\n".encode(),
        blocker=work / "blocked" / "afile", fresh=work / "fresh" / "nothing" / "mlflow.db",
        empty=new_store(work / "empty"))
    paths.no_markers.parent.mkdir()
    paths.no_markers.write_bytes(paths.no_markers_bytes)
    paths.blocker.parent.mkdir()
    paths.blocker.write_text("I am a file\n")
    args = {
        "markdown": ["report", "--markdown", "--tracking-uri", store.uri],
        "unknown_study": ["report", "--study", "nope", "--tracking-uri", store.uri],
        "fresh_store": ["report", "--tracking-uri", f"sqlite:///{paths.fresh}"],
        "empty_store": ["report", "--tracking-uri", paths.empty],
        "no_markers": ["report", "--update", str(paths.no_markers), "--tracking-uri", store.uri],
        "out_under_file": ["report", "--out", str(paths.blocker / "out.md"), "--tracking-uri", store.uri],
        "two_formats": ["report", "--csv", "--json"],
    }
    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        futures = {name: pool.submit(run_cli, *command) for name, command in args.items()}
        results = {name: future.result() for name, future in futures.items()}
    return SimpleNamespace(paths=paths, **results)


# --------------------------------------------------------------------------- the table
@pytest.fixture(scope="module")
def markdown(commands) -> str:
    result = commands.markdown
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_markdown_header_has_the_practitioner_columns_then_extras(markdown):
    header, _ = markdown_rows(markdown)
    assert header[:4] == EN
    assert header[4:] == EXTRAS


def test_markdown_one_row_per_group_plus_teacher_rows(store, markdown):
    _, rows = markdown_rows(markdown)
    expected = store.expected()
    trial_rows = [row for row in rows if row[0] == PAIR]
    teacher_rows = [row for row in rows if row[0] == TEACHER_PAIR]
    assert len(trial_rows) == len(expected) == 9 + 4 + 3
    assert len(teacher_rows) == len(store.studies)
    assert len(rows) == len(trial_rows) + len(teacher_rows)
    assert {(r[STUDY], r[1], r[2]) for r in trial_rows} == set(zip(expected["study"], expected["setting"],
                                                                expected["init_name"]))
    assert "T=99" not in markdown  # failed and pruned trials are not reported
    for row in teacher_rows:
        assert row[1:4] == ["fine-tuned on gold labels", "pretrained weights", "90.50 (n=1)"]
        assert row[len(EN) + EXTRAS.index("speedup")] == "1.00x"  # the teacher against itself


def test_markdown_speedup_is_the_median_of_the_runs_measured_speedups(markdown):
    _, rows = markdown_rows(markdown)
    speedups = {row[len(EN) + EXTRAS.index("speedup")] for row in rows if row[0] == PAIR}
    assert speedups == {f"{FAKE_SPEEDUP:.2f}x"}


def test_markdown_scores_are_mean_std_n_of_the_seeds(store, markdown):
    _, rows = markdown_rows(markdown)
    expected = store.expected().set_index(["study", "setting", "init_name"])
    for row in rows:
        if row[0] != PAIR:
            continue
        match = SCORE.match(row[3])
        assert match, row[3]
        mean, std, n = float(match[1]), float(match[2]), int(match[3])
        want = expected.loc[(row[STUDY], row[1], row[2])]
        assert n == want["n"] == 3
        assert mean == pytest.approx(round(want["mean"] * 100, 2), abs=0.0051)
        assert std == pytest.approx(round(want["std"] * 100, 2), abs=0.0051)


def test_markdown_rows_sorted_by_study_then_score(markdown):
    _, rows = markdown_rows(markdown)
    studies = [row[STUDY] for row in rows]
    assert studies == sorted(studies)
    for study in set(studies):
        block = [row for row in rows if row[STUDY] == study]
        assert block[0][0] == TEACHER_PAIR
        means = [float(SCORE.match(row[3])[1]) for row in block[1:]]
        assert means == sorted(means, reverse=True)


def test_best_dev_f1_is_reported_not_the_last_eval(store, markdown):
    from mlflow.tracking import MlflowClient

    study = store.studies["layer_mapping"]
    client = MlflowClient(store.uri)
    run_id = study.trial_run_ids[0]
    first_seed = study.values[study.values["run_id"] == run_id].iloc[0]
    history = [m.value for m in client.get_metric_history(run_id, "dev_f1")]
    # The trap is set: the curve peaked at the best and the run's latest dev_f1 is 3 points lower.
    assert max(history) == pytest.approx(first_seed["dev_f1"])
    assert client.get_run(run_id).data.metrics["dev_f1"] == pytest.approx(first_seed["dev_f1"] - 0.03)
    _, rows = markdown_rows(markdown)
    values = study.values
    for row in (row for row in rows if row[STUDY] == "layer_mapping" and row[0] == PAIR):
        group = values[values["setting"] == row[1]]
        reported = float(SCORE.match(row[3])[1])
        assert reported == pytest.approx(round(group["dev_f1"].mean() * 100, 2), abs=0.0051)
        assert abs(reported - group["last_dev_f1"].mean() * 100) > 2.5


def test_lang_zh_headers(store, monkeypatch, capsys):
    code, out, err = call_cli(monkeypatch, capsys, "report", "--lang", "zh", "--tracking-uri", store.uri)
    assert code == 0, err
    header, rows = markdown_rows(out)
    assert header[:4] == ZH
    assert " | ".join(header[:4]) == "模型的参数选取 | 蒸馏设定 | 初始化方式 | 产出模型表现"
    assert header[4:] == ["测试集 F1", "保留率", "学生参数量", "压缩比", "推理加速比", "诊断", "实验", "MLflow 运行"]  # every header
    assert len(rows) == 9 + 4 + 3 + 3


def test_csv_is_numeric(store, monkeypatch, capsys):
    code, out, err = call_cli(monkeypatch, capsys, "report", "--csv", "--tracking-uri", store.uri)
    assert code == 0, err
    table = pd.read_csv(StringIO(out))
    assert {"study", "pair", "setting", "init", "dev_f1_mean", "dev_f1_std", "n", "test_f1_mean",
            "retention", "reference"} <= set(table.columns)
    trials = table[~table["reference"]]
    merged = trials.merge(store.expected(), left_on=["study", "setting", "init"],
                          right_on=["study", "setting", "init_name"], validate="one_to_one")
    assert len(merged) == len(trials) == 16
    assert merged["dev_f1_mean"].to_numpy() == pytest.approx(merged["mean"].to_numpy(), abs=1e-9)
    assert merged["dev_f1_std"].to_numpy() == pytest.approx(merged["std"].to_numpy(), abs=1e-9)
    assert (merged["n_x"] == merged["n_y"]).all()
    assert table["reference"].sum() == 3
    assert (table.loc[table["reference"], "dev_f1_mean"] == 0.905).all()


def test_json_records(store, monkeypatch, capsys):
    code, out, err = call_cli(monkeypatch, capsys, "report", "--json", "--tracking-uri", store.uri,
                              "--study", "init_strategy")
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 3 + 1
    values = store.studies["init_strategy"].values
    for record in records:
        if record["reference"]:
            assert record["pair"] == TEACHER_PAIR and record["dev_f1_mean"] == pytest.approx(0.905)
            continue
        group = values[values["init_name"] == record["init"]]["dev_f1"]
        assert record["dev_f1_mean"] == pytest.approx(group.mean())
        assert record["dev_f1_std"] == pytest.approx(group.std())
        assert record["n"] == 3
        assert record["retention"] == pytest.approx(group.mean() / 0.905)
    assert {r["init"] for r in records} == {"fine-tuned teacher weights", "pretrained weights", "random"}


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._kind = ""

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell, self._kind = [], tag

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.headers if self._kind == "th" else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_table(store, monkeypatch, capsys):
    code, out, err = call_cli(monkeypatch, capsys, "report", "--html", "--tracking-uri", store.uri)
    assert code == 0, err
    assert out.lstrip().startswith("<table") and "distill-lab-report" in out
    parser = _Table()
    parser.feed(out)
    assert parser.headers == EN + EXTRAS
    rows = [row for row in parser.rows if row]
    assert len(rows) == 19
    assert all(len(row) == len(parser.headers) for row in rows)
    assert all(SCORE.match(row[3]) for row in rows)


def test_out_writes_the_same_text(store, monkeypatch, capsys, markdown, tmp_path):
    target = tmp_path / "report.md"
    code, out, err = call_cli(monkeypatch, capsys, "report", "--out", str(target), "--tracking-uri", store.uri)
    assert code == 0, err
    assert out == ""
    assert target.read_text(encoding="utf-8") == markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no temporary file left


# --------------------------------------------------------------------------- --update
def test_update_rewrites_only_the_marked_region(store, tmp_path, monkeypatch, capsys):
    before = ("# Results — ünïcödé\r\n\nHand-written intro with trailing spaces   \n\n".encode("utf-8")
              + reporting.BEGIN.encode())
    after = (reporting.END + "\n\nFooter\twith a tab\r\nlast line without newline").encode("utf-8")
    readme = tmp_path / "README.md"
    readme.write_bytes(before + b"\n| old | table |\n| --- | --- |\n" + after)
    code, out, err = call_cli(monkeypatch, capsys, "report", "--update", str(readme), "--tracking-uri", store.uri)
    assert code == 0 and out == "", err
    data = readme.read_bytes()
    assert data.startswith(before)
    assert data.endswith(after)
    region = data[len(before):len(data) - len(after)].decode("utf-8")
    assert "| old | table |" not in region
    header, rows = markdown_rows(region)
    assert header[:4] == EN and len(rows) == 19
    # Idempotent: a second update leaves the same bytes.
    code, _, err = call_cli(monkeypatch, capsys, "report", "--update", str(readme), "--tracking-uri", store.uri)
    assert code == 0, err
    assert readme.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_update_uses_the_end_marker_that_follows_begin(store, tmp_path, monkeypatch, capsys):
    # Prose before the region may quote the END marker; only the END after BEGIN closes the region.
    head = f"How to: put {reporting.BEGIN} and {reporting.END} around the table.\n\n".replace(
        reporting.BEGIN, "BEGIN-marker").encode() + reporting.BEGIN.encode()
    tail = f"{reporting.END}\n".encode()
    readme = tmp_path / "README.md"
    readme.write_bytes(head + b"\nold\n" + tail)
    code, _, err = call_cli(monkeypatch, capsys, "report", "--update", str(readme), "--study", "init_strategy",
                            "--tracking-uri", store.uri)
    assert code == 0, err
    data = readme.read_bytes()
    assert data.startswith(head) and data.endswith(tail)
    assert len(markdown_rows(data[len(head):-len(tail)].decode())[1]) == 4


def test_update_regenerates_each_named_region_from_its_own_studies_and_keeps_the_rest(store, tmp_path,
                                                                                      monkeypatch, capsys):
    named = "<!-- distill-lab:report:begin studies=init_strategy -->"
    elsewhere = "<!-- distill-lab:report:begin studies=init_strategy,not_in_this_store -->"
    kept = "\n| written | from another store |\n"
    head, middle, tail = "# Results\n\n", f"{reporting.END}\n\nprose between regions\n\n", f"{reporting.END}\nend\n"
    doc = tmp_path / "results.md"
    doc.write_text(head + named + "\nold\n" + middle + elsewhere + kept + tail, encoding="utf-8")
    code, out, err = call_cli(monkeypatch, capsys, "report", "--update", str(doc), "--tracking-uri", store.uri)
    assert code == 0 and out == "", err
    data = doc.read_text(encoding="utf-8")
    assert data.startswith(head + named) and data.endswith(middle + elsewhere + kept + tail)
    region = data[len(head + named):data.index(middle)]
    header, rows = markdown_rows(region)
    assert header[:4] == EN and len(rows) == 4  # init_strategy alone, as with --study init_strategy
    assert all(row[len(EN) + EXTRAS.index("study")] == "init_strategy" for row in rows)
    assert "kept the region of init_strategy, not_in_this_store" in err


def test_update_where_no_region_can_be_regenerated_is_an_error(store, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "results.md"
    original = f"<!-- distill-lab:report:begin studies=elsewhere -->\nold\n{reporting.END}\n".encode()
    doc.write_bytes(original)
    code, out, err = call_cli(monkeypatch, capsys, "report", "--update", str(doc), "--tracking-uri", store.uri)
    assert code == 2 and out == "" and "no region could be regenerated" in err and "elsewhere" in err, err
    assert len(err.strip().splitlines()) == 1
    assert doc.read_bytes() == original


def test_update_of_a_non_utf8_file_is_an_error(store, tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    original = b"caf\xe9 latin-1\n" + reporting.BEGIN.encode() + b"\n" + reporting.END.encode() + b"\n"
    readme.write_bytes(original)
    code, out, err = call_cli(monkeypatch, capsys, "report", "--update", str(readme), "--tracking-uri", store.uri)
    assert code == 2 and out == "" and "not UTF-8" in err and len(err.strip().splitlines()) == 1, err
    assert readme.read_bytes() == original


# --------------------------------------------------------------------------- --analysis
def test_analysis_reports_t_star_and_logs_to_the_parent_run(store, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.uri)
    parent = store.studies["temperature_convexity"].parent_run_id
    code, quiet, err = call_cli(monkeypatch, capsys, "report", "--analysis", "--tracking-uri", store.uri)
    assert code == 0, err
    assert client.list_artifacts(parent, "analysis") == []  # a reader writes nothing unless asked
    code, out, err = call_cli(monkeypatch, capsys, "report", "--analysis", "--log-to-runs", "--tracking-uri", store.uri)
    assert code == 0, err
    assert out == quiet
    assert "### temperature_convexity: dev F1 vs temperature" in out
    match = re.search(r"T\* = ([0-9.]+), 95% bootstrap CI \[([0-9.]+), ([0-9.]+)\]", out)
    assert match, out
    t_star, low, high = map(float, match.groups())
    assert low <= 5.0 <= high and low <= t_star <= high
    assert "**verdict: one interior optimum supported**" in out
    # Group comparisons for the studies that searched mappings and inits.
    assert "### layer_mapping: dev F1 by mapping (vs uniform, F1 points)" in out
    assert "### init_strategy: dev F1 by init (vs pretrained weights, F1 points)" in out

    names = {item.path for item in client.list_artifacts(parent, "analysis")}
    assert names == {"analysis/temperature_curve.png", "analysis/temperature_fit.json"}
    local = Path(client.download_artifacts(parent, "analysis", str(tmp_path)))
    assert (local / "temperature_curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    fit = json.loads((local / "temperature_fit.json").read_text())
    assert fit["verdict"] == "one interior optimum supported"
    assert fit["t_star"] == pytest.approx(t_star, abs=0.006)
    assert fit["t_star_ci"][0] <= 5.0 <= fit["t_star_ci"][1]
    assert fit["points"] == 27  # 9 temperatures x 3 seeds: failed and pruned trials left out
    # Only the temperature study searched distill.temperature: nothing logged on the other parents.
    other = store.studies["layer_mapping"].parent_run_id
    assert client.list_artifacts(other, "analysis") == []


# --------------------------------------------------------------------------- bad input
def test_unknown_study(commands):
    line = assert_one_error_line(commands.unknown_study, "no study named nope")
    assert "temperature_convexity" in line  # says which studies exist


def test_fresh_store_uri_is_an_error_and_creates_nothing(commands):
    assert_one_error_line(commands.fresh_store, "no database file")
    assert not commands.paths.fresh.parent.exists()


def test_empty_store(commands):
    assert_one_error_line(commands.empty_store, "has no distill-lab runs")


def test_update_without_markers_leaves_the_file_alone(commands):
    readme = commands.paths.no_markers
    assert_one_error_line(commands.no_markers, "markers", str(readme))
    assert readme.read_bytes() == commands.paths.no_markers_bytes
    assert sorted(p.name for p in readme.parent.iterdir()) == ["README.md"]


def test_out_under_a_regular_file_is_an_error(commands):
    blocker = commands.paths.blocker
    assert_one_error_line(commands.out_under_file, str(blocker / "out.md"))
    assert blocker.read_text() == "I am a file\n"
    assert sorted(p.name for p in blocker.parent.iterdir()) == ["afile"]


def test_two_formats_at_once(commands):
    assert_one_error_line(commands.two_formats, "choose one output format", "--csv", "--json")


def test_out_onto_a_directory_is_an_error(store, tmp_path, monkeypatch, capsys):
    target = tmp_path / "adir"
    target.mkdir()
    code, out, err = call_cli(monkeypatch, capsys, "report", "--out", str(target), "--tracking-uri", store.uri)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--update", "README.md", "--csv"], "--update writes a markdown table"),
    (["--lang", "fr"], "--lang 'fr'"),
    (["--update", "does-not-exist.md"], "file not found"),
    (["--analysis", "--csv"], "--analysis writes markdown sections"),
    (["--lang", "zh", "--json"], "--lang zh translates the markdown and HTML headers"),
    (["--log-to-runs"], "--log-to-runs logs the --analysis figures"),
])
def test_bad_option_combinations(store, monkeypatch, capsys, tmp_path, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = call_cli(monkeypatch, capsys, "report", *args, "--tracking-uri", store.uri)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and fragment in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- reading the store
def test_database_read_matches_the_mlflow_api(store):
    import os

    environment = os.environ.get("MLFLOW_TRACKING_URI")
    fast = tracked.read_database(store.uri)
    slow = tracked.search_runs_api(store.uri)
    # The API path points MLflow's global (and MLFLOW_TRACKING_URI) at the store only while it reads.
    assert os.environ.get("MLFLOW_TRACKING_URI") == environment
    assert fast is not None
    fast, slow = fast.set_index("run_id").sort_index(), slow.set_index("run_id").sort_index()
    assert set(fast.columns) == set(slow.columns)
    pd.testing.assert_frame_equal(fast[slow.columns], slow, check_dtype=False)


def test_load_runs_filters_studies(store):
    runs = tracked.load_runs(store.uri, ["layer_mapping"])
    assert set(runs["tags.study"]) == {"layer_mapping"}
    assert sorted(runs["tags.role"].value_counts().items()) == [("study", 1), ("teacher", 1), ("trial", 4)]


# --------------------------------------------------------------------------- KD vs no KD, strata
@pytest.fixture(scope="module")
def headline(tmp_path_factory) -> tuple[str, FakeStudy]:
    """Pretrained vs teacher init x no KD vs KD: KD gains 3 points with teacher init, nothing with pretrained."""
    uri = new_store(tmp_path_factory.mktemp("headline_store"))
    study = log_fake_study(uri, "headline", temperatures=(6,), inits=["pretrained", "teacher"],
                           init_effect={"teacher": 0.05}, no_kd_effect={"pretrained": 0.0, "teacher": -0.03},
                           rng_seed=3)
    return uri, study


def _expected_means(study: FakeStudy) -> dict[tuple[str, str], float]:
    means = study.values.groupby(["init_name", "setting"])["dev_f1"].mean() * 100
    return {key: float(value) for key, value in means.items()}


def test_kd_is_compared_with_the_no_kd_arm_within_each_init(headline):
    uri, study = headline
    sections = {section.factor: section for section in report_analysis.group_sections(tracked.load_runs(uri))}
    assert set(sections) == {"init", "setting"}
    kd = sections["setting"]
    assert kd.reference == "T=1 a=1/0/0" and kd.strata == ["init"]
    frame = report_analysis.section_frame(kd)
    means = _expected_means(study)
    assert len(frame) == 4  # 2 inits x (KD, no KD)
    for row in frame.to_dict("records"):
        assert row["mean"] == pytest.approx(means[(row["init"], row["setting"])], abs=0.006)
        expected_diff = means[(row["init"], row["setting"])] - means[(row["init"], "T=1 a=1/0/0")]
        assert row["diff"] == pytest.approx(expected_diff, abs=0.006)
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    gained = frame[(frame["init"] == "fine-tuned teacher weights") & (frame["setting"] == "T=6 a=0.2/0.8/0")].iloc[0]
    assert 2.0 < gained["diff"] < 4.0 and gained["ci_low"] > 0 and not gained["within_noise"]
    plain_rows = frame[frame["setting"] == "T=1 a=1/0/0"]
    assert (plain_rows["diff"] == 0).all() and plain_rows["within_noise"].all()


def test_init_is_compared_within_each_setting_not_pooled(headline):
    uri, study = headline
    sections = {section.factor: section for section in report_analysis.group_sections(tracked.load_runs(uri))}
    init = sections["init"]
    assert init.reference == "pretrained weights" and init.strata == ["setting"]
    frame = report_analysis.section_frame(init).set_index(["setting", "init"])
    means = _expected_means(study)
    # Teacher init: +5 points without KD... +8 with it (the KD gain only exists for the teacher init).
    for setting, gap in (("T=1 a=1/0/0", 2.0), ("T=6 a=0.2/0.8/0", 5.0)):
        diff = frame.loc[(setting, "fine-tuned teacher weights"), "diff"]
        assert diff == pytest.approx(means[("fine-tuned teacher weights", setting)]
                                     - means[("pretrained weights", setting)], abs=0.006)
        assert diff == pytest.approx(gap, abs=1.0)


def test_analysis_markdown_names_the_strata(headline, monkeypatch, capsys):
    uri, _ = headline
    code, out, err = call_cli(monkeypatch, capsys, "report", "--analysis", "--tracking-uri", uri)
    assert code == 0, err
    assert "### headline: dev F1 by setting (KD vs no KD), within each init (vs T=1 a=1/0/0, F1 points)" in out
    assert "### headline: dev F1 by init, within each setting (vs pretrained weights, F1 points)" in out
    header, rows = markdown_rows(out.split("### headline: dev F1 by setting")[1])
    assert header[:3] == ["init", "setting", "n"] and len(rows) == 4


def test_a_study_without_a_no_kd_arm_gets_no_kd_comparison(store):
    factors = {(section.study, section.factor) for section in report_analysis.group_sections(tracked.load_runs(store.uri))}
    assert factors == {("layer_mapping", "mapping"), ("init_strategy", "init")}


def test_a_mapping_study_without_uniform_is_compared_with_its_best_mapping(tmp_path, monkeypatch, capsys):
    uri = new_store(tmp_path)
    log_fake_study(uri, "no_uniform", temperatures=(4,), mappings=["last", "skip"], mapping_effect={"last": -0.03},
                   rng_seed=5)
    (section,) = report_analysis.group_sections(tracked.load_runs(uri))
    assert (section.factor, section.reference) == ("mapping", "skip")
    code, out, err = call_cli(monkeypatch, capsys, "report", "--analysis", "--tracking-uri", uri)
    assert code == 0, err
    assert "### no_uniform: dev F1 by mapping (vs skip, F1 points)" in out
    header, rows = markdown_rows(out.split("### no_uniform: dev F1 by mapping")[1])
    assert "diff_vs_skip" in header


def test_report_from_committed_run_records_matches_the_store(store, headline, tmp_path, monkeypatch, capsys):
    from distill_lab.records import export_experiment

    uri, _ = headline
    for name in store.studies:
        export_experiment(name, store.uri, tmp_path / "records")
    export_experiment("headline", uri, tmp_path / "records")
    code, from_store, _ = call_cli(monkeypatch, capsys, "report", "--tracking-uri", store.uri)
    assert code == 0
    code, from_records, _ = call_cli(monkeypatch, capsys, "report", "--records", str(tmp_path / "records"),
                                     *[arg for name in store.studies for arg in ("--study", name)])
    assert code == 0 and from_records == from_store
    # The analysis (Welch intervals, KD vs no KD, test F1 beside dev F1) reads the records as the store.
    code, analysed_store, _ = call_cli(monkeypatch, capsys, "report", "--analysis", "--study", "headline",
                                       "--tracking-uri", uri)
    code2, analysed_records, _ = call_cli(monkeypatch, capsys, "report", "--analysis", "--study", "headline",
                                          "--records", str(tmp_path / "records"))
    assert code == code2 == 0 and analysed_records == analysed_store
    assert "test_ci_low" in analysed_records and "difference(s) to a reference arm" in analysed_records
    # Every score cell names the runs it comes from.
    header, rows = markdown_rows(from_records)
    column = header.index("MLflow runs")
    assert all(re.fullmatch(r"[0-9a-f]{8}( [0-9a-f]{8})*", row[column]) for row in rows)


def test_report_records_errors_are_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = call_cli(monkeypatch, capsys, "report", "--records", str(tmp_path / "none"))
    assert code == 2 and "no such run-record export" in err and "Traceback" not in err
    code, _, err = call_cli(monkeypatch, capsys, "report", "--records", str(tmp_path), "--tracking-uri",
                            "sqlite:///x.db")
    assert code == 2 and "choose one" in err


# --------------------------------------------------------------------------- generic grid factors
def test_a_grid_study_without_kd_pair_compares_each_grid_key_with_its_first_value(tmp_path, monkeypatch, capsys):
    uri = new_store(tmp_path)
    # Two temperatures only (no curve to fit), T=8 better by 2 points, 3 seeds each.
    study = log_fake_study(uri, "two_t", temperatures=(4, 8), score=lambda t: 0.80 + (0.02 if t == 8 else 0.0),
                           noise=0.002, rng_seed=3)
    (section,) = report_analysis.group_sections(tracked.load_runs(uri))
    assert (section.study, section.factor, section.reference, section.strata) == ("two_t", "distill.temperature", "4", [])
    ((_, comparison),) = section.comparisons
    rows = {row["distill.temperature"]: row for row in comparison.rows}
    values = study.values.groupby("temperature")["dev_f1"].mean()
    assert rows["8"]["diff_vs_4"] == pytest.approx(values[8.0] - values[4.0])
    assert rows["8"]["ci_low"] > 0 and rows["8"]["within_noise"] is False  # 2 points against 0.2 of noise
    code, out, err = call_cli(monkeypatch, capsys, "report", "--analysis", "--tracking-uri", uri)
    assert code == 0, err
    assert "### two_t: dev F1 by distill.temperature (vs 4, F1 points)" in out


def test_grid_labels_name_values_as_a_reader_would():
    assert report_analysis.grid_label(None) == "none"
    assert report_analysis.grid_label({"drop_types": ["MISC"]}) == "{drop_types:[MISC]}"
    assert report_analysis.grid_label(2.0) == "2" and report_analysis.grid_label(5) == "5"
    assert report_analysis.grid_label("bf16") == "bf16"


def test_arms_that_differ_only_in_precision_get_their_own_setting(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = new_store(tmp_path)
    study = log_fake_study(uri, "prec", temperatures=(4,), inits=["teacher", "pretrained"], rng_seed=1)
    client = MlflowClient(uri)
    for run_id, precision in zip(study.trial_run_ids, ("fp32", "bf16")):
        client.set_tag(run_id, "precision", precision)
    rows = reporting.seed_rows(tracked.load_runs(uri))
    settings = dict(zip(rows["init"], rows["setting"]))
    base = study.values["setting"].iloc[0]
    assert settings == {"fine-tuned teacher weights": f"{base} fp32", "pretrained weights": f"{base} bf16"}
    log_fake_study(uri, "one_precision", temperatures=(4,), rng_seed=2)  # one precision: names unchanged
    rows = reporting.seed_rows(tracked.load_runs(uri))
    assert set(rows.loc[rows["study"] == "one_precision", "setting"]) == {base}


def _searched_runs() -> pd.DataFrame:
    """Four finished trial runs of one study: two learning rates x two student widths, one setting tag."""
    rows = []
    for index, (lr, width, layers) in enumerate([(1e-4, 256, 3), (5e-5, 256, 3), (1e-4, 192, 3), (1e-4, 256, 4)]):
        sampled = {"training.learning_rate": lr, "student.from_teacher.hidden_size": width,
                   "student.from_teacher.num_layers": layers, "distill.temperature": 8.0}
        rows.append({"run_id": f"run{index}", "status": "FINISHED", "tags.role": "trial", "tags.optuna_state": "COMPLETE",
                     "tags.study": "lr", "tags.setting": "T=8 a=0.2/0.8/0", "tags.init": "pretrained weights",
                     "tags.teacher": "MiniLM-L6 (6 layers)", "tags.student_model": f"MiniLM ({layers} layers)",
                     "params.optuna.params": json.dumps(sampled),
                     "metrics.dev_f1_seed1": 0.80 + index / 100, "metrics.test_f1_seed1": 0.70 + index / 100})
    other = {**rows[0], "run_id": "other", "tags.study": "fixed",
             "params.optuna.params": json.dumps({"training.learning_rate": 1e-4})}
    frame = pd.DataFrame(rows + [other])
    for column in ("metrics.dev_f1", "metrics.test_f1", "metrics.teacher_params"):  # a store's teacher-run columns
        frame[column] = float("nan")
    return frame


def test_arms_that_differ_in_a_searched_parameter_no_column_names_get_their_own_setting():
    rows = reporting.seed_rows(_searched_runs()).set_index("run_id")
    base = "T=8 a=0.2/0.8/0"
    # The depth is the student column's, the temperature the setting's: only lr and width are added.
    assert rows["setting"].to_dict() == {
        "run0": f"{base} hidden_size=256 learning_rate=0.0001", "run1": f"{base} hidden_size=256 learning_rate=5e-05",
        "run2": f"{base} hidden_size=192 learning_rate=0.0001", "run3": f"{base} hidden_size=256 learning_rate=0.0001",
        "other": base}  # a study whose trials agree on it keeps its label
    table = reporting.experiment_table(_searched_runs())
    assert len(table[table["study"] == "lr"]) == 4 and (table["n"] == 1).all()  # no row averages two arms
    run1 = table[table["setting"].str.endswith("5e-05")].iloc[0]
    assert run1["dev_f1_mean"] == pytest.approx(0.81) and run1["runs"] == "run1"


def test_the_report_flags_a_weak_teacher_in_records_made_before_the_rule(tmp_path):
    """mpnet_table_pilot_4l's runs were tagged "ok" before the weak-teacher rule existed: the report
    applies the rule again from their recorded dev F1s (teacher 78.75 dev), to the KD rows only."""
    from distill_lab.records import load_records
    from distill_lab.report_table import experiment_table

    records = Path(__file__).resolve().parents[1] / "results" / "records"
    runs = load_records(records, ["mpnet_table_pilot_4l", "mpnet_table_4l"])
    assert set(runs["tags.diagnosis"].dropna()) == {"ok"}  # as recorded
    table = experiment_table(runs)
    students = table[~table["reference"]].set_index(["study", "setting", "init"])["diagnosis"]
    pilot = students.loc["mpnet_table_pilot_4l"]
    assert (pilot.xs("T=1 a=1/0/0", level="setting") == "ok").all()  # 87.09 / 86.40: above, but no KD
    for setting in ("T=10 a=0.2/0.8/0", "T=15 a=0.2/0.8/0"):
        assert (pilot.xs(setting, level="setting") == "weak-teacher").all()  # 82.90-84.08 > 78.75
    assert (students.loc["mpnet_table_4l"] == "ok").all()  # every student below its 90.04 teacher


def test_rediagnose_keeps_the_rules_it_cannot_check_and_needs_the_margin():
    import pandas as pd

    from distill_lab.report_table import rediagnose

    nan = float("nan")
    rows = pd.DataFrame({
        "diagnosis": ["ok", "ok", "overfitting", "ok", "ok", "ok", "weak-teacher", "weak-teacher"],
        "dev_f1": [0.800, 0.7951, 0.90, 0.90, 0.90, 0.86, 0.86, 0.7949],
        "teacher_dev_f1": [0.79, 0.79, 0.79, 0.0, 0.79, 0.79, 0.79, 0.79],
        "alpha_soft": [0.8, 0.0, 0.8, 0.8, 0.0, 0.8, 0.8, 0.8],
        "alpha_hidden": [0.0, 1.0, 0.0, 0.0, nan, 0.0, 0.0, 0.0],
        # KD on transfer text: a student above its teacher is the gain, not a weak teacher (both ways).
        "transfer_ratio": [nan, nan, nan, nan, nan, 6.0, 6.0, nan],
    })
    assert rediagnose(rows).tolist() == ["weak-teacher", "weak-teacher", "overfitting", "ok", "ok", "ok", "ok", "ok"]
    assert rediagnose(rows.drop(columns=["teacher_dev_f1"])).tolist() == rows["diagnosis"].tolist()
