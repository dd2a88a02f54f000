"""bench.records_diff: two stores of one study compared run by run, name by name, value by value."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from bench import records_diff
from tests.fake_runs import log_fake_study, new_store


def _store(directory, **options):
    uri = new_store(directory)
    log_fake_study(uri, "quick", temperatures=(2, 8), seeds=(1, 2), eval_steps=2, **options)
    return uri


def _trial_run(uri: str, number: int) -> str:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick")
    return client.search_runs([experiment.experiment_id], f"tags.trial_number = '{number}'")[0].info.run_id


def test_records_diff_finds_two_stores_of_the_same_study_identical(tmp_path, capsys):
    before, after = _store(tmp_path / "before"), _store(tmp_path / "after")
    result = records_diff.compare(records_diff.snapshot(before, "quick"), records_diff.snapshot(after, "quick"))
    assert result["counts"]["runs"] == 4  # parent, teacher, two trials
    assert result["counts"]["metric_points"] > result["counts"]["metrics"] > 0
    assert records_diff.same(result)
    assert records_diff.main([str(tmp_path / "before"), str(tmp_path / "after"), "--experiment", "quick"]) == 0
    assert capsys.readouterr().out.endswith("identical\n")


def test_records_diff_names_changed_values_added_tags_and_changed_artifacts(tmp_path, capsys):
    before, after = _store(tmp_path / "before"), _store(tmp_path / "after")
    run_before, run_after = _trial_run(before, 1), _trial_run(after, 1)
    MlflowClient(after).set_tag(run_after, "added_later", "x")
    MlflowClient(after).log_metric(run_after, "dev_f1", 0.5, step=99)
    for uri, run_id, order in ((before, run_before, "a: 1\nb: 2\n"), (after, run_after, "b: 2\na: 1\n")):
        MlflowClient(uri).log_text(run_id, order, "config.yaml")  # same content, other key order
        MlflowClient(uri).log_text(run_id, run_id, "figure.png")  # other bytes
    assert records_diff.main([str(tmp_path / "before"), str(tmp_path / "after"), "--experiment", "quick"]) == 1
    out = capsys.readouterr().out
    assert "trial:1:\n  tags only after: added_later\n  metrics dev_f1: " in out
    assert "artifacts figure.png:" in out and "config.yaml" not in out
    assert out.endswith("DIFFERENT\n") and "trial:0" not in out
    result = records_diff.compare(records_diff.snapshot(before, "quick"), records_diff.snapshot(after, "quick"),
                                  frozenset({"figure.png"}))
    assert set(result["runs"]) == {"trial:1"} and set(result["runs"]["trial:1"]) == {"tags", "metrics"}
