"""Learning curves from committed run records: which points are evaluations, arms, peaks, the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_lab.cli import app
from distill_lab.curves import curve_frame, peaks, ranked_arms
from distill_lab.errors import DistillLabError


def _trial(run_id: str, setting: str, layers: int, curves: dict[str, list[list[float]]], best: float,
           state: str = "COMPLETE") -> dict:
    return {"run_id": run_id, "run_name": run_id, "status": "FINISHED", "parent_run_id": "p",
            "params": {"optuna.params": json.dumps({"distill.temperature": 8.0, "student.from_teacher.num_layers": layers})},
            "tags": {"role": "trial", "study": "s", "setting": setting, "init": "random", "optuna_state": state},
            "metrics": {"best_dev_f1": best}, "history": curves}


def _records(tmp_path: Path) -> Path:
    runs = [
        # First seed's curve ends with the trial's value one step after its last evaluation (objective._log_final).
        _trial("a", "T=8 a=0.2/0.8/0", 3, {"dev_f1": [[10, 0.5], [20, 0.7], [21, 0.65]],
                                          "seed2_dev_f1": [[10, 0.4], [19, 0.6]], "seed2_loss_total": [[10, 1.0]]}, 0.65),
        _trial("b", "T=8 a=0.2/0.8/0", 5, {"dev_f1": [[10, 0.6], [20, 0.55], [21, 0.6]],
                                          "seed2_dev_f1": [[10, 0.8], [20, 0.65]]}, 0.6),
        _trial("c", "T=8 a=0.2/0.8/0", 7, {"dev_f1": [[10, 0.9]]}, 0.9, state="PRUNED"),  # not a result
        {**_trial("d", "x", 3, {}, 0.0), "tags": {"role": "trial", "study": "other", "setting": "x"}},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": 1, "experiment": "s", "runs": runs}))
    return path


def test_curves_keep_evaluations_only_and_name_arms_by_what_differs(tmp_path):
    frame = curve_frame(_records(tmp_path), "s")
    assert sorted(frame["arm"].unique()) == ["T=8 a=0.2/0.8/0 num_layers=3", "T=8 a=0.2/0.8/0 num_layers=5"]
    first = frame[(frame["arm"].str.endswith("=3")) & (frame["seed"] == "first")]
    assert first["step"].tolist() == [10, 20] and first["dev_f1"].tolist() == [0.5, 0.7]  # not the 21
    assert len(frame) == 8  # loss curves, the pruned trial and the other study are left out
    table = peaks(frame).set_index("arm")
    # Layers 3: evaluation means 0.45 (step 10), 0.65 (steps 20 and 19 -> 20 after rounding 19.5).
    assert table.loc["T=8 a=0.2/0.8/0 num_layers=3", "peak_dev_f1"] == pytest.approx(0.65)
    assert table.loc["T=8 a=0.2/0.8/0 num_layers=3", "peak_step"] == 20
    # Layers 5 peaks at its first evaluation (0.7) and ends lower (0.6).
    assert table.loc["T=8 a=0.2/0.8/0 num_layers=5"].tolist()[:4] == [10, pytest.approx(0.7), 20, pytest.approx(0.6)]
    # The plot's legend ranks the arms by their last mean (0.65 > 0.6), whatever their names sort to.
    assert ranked_arms(frame) == ["T=8 a=0.2/0.8/0 num_layers=3", "T=8 a=0.2/0.8/0 num_layers=5"]
    renamed = frame.replace({"arm": {"T=8 a=0.2/0.8/0 num_layers=3": "z", "T=8 a=0.2/0.8/0 num_layers=5": "a"}})
    assert ranked_arms(renamed) == ["z", "a"]


def test_records_curves_command_writes_the_png_and_prints_each_peak(tmp_path, capsys):
    out = tmp_path / "img" / "curves.png"
    assert app(["records", "curves", str(_records(tmp_path)), "--study", "s", "--out", str(out)],
               standalone_mode=False) in (0, None)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "T=8 a=0.2/0.8/0 num_layers=5: peak 70.00 at step 10, last 60.00 at step 20" in printed
    with pytest.raises(DistillLabError, match="no finished trial of study 'nope'"):
        curve_frame(_records(tmp_path), "nope")


def test_curves_of_several_studies_prefix_each_arm_with_its_study(tmp_path, capsys):
    """A KD arm and its no-KD twin are studies of their own (mpnet_transfer_4l / _nokd): one plot."""
    path = _records(tmp_path)
    document = json.loads(path.read_text())
    document["runs"][3] = _trial("d", "T=1 a=1/0/0", 3, {"dev_f1": [[10, 0.3], [20, 0.4], [21, 0.4]]}, 0.4)
    document["runs"][3]["tags"]["study"] = "twin"
    path.write_text(json.dumps(document))
    frame = curve_frame(path, ["s", "twin", "s"])  # a repeated name counts once
    assert sorted(frame["arm"].unique()) == ["s: T=8 a=0.2/0.8/0 num_layers=3", "s: T=8 a=0.2/0.8/0 num_layers=5",
                                             "twin: T=1 a=1/0/0"]
    assert frame[frame["arm"] == "twin: T=1 a=1/0/0"]["dev_f1"].tolist() == [0.3, 0.4]
    assert len(frame) == 10
    out = tmp_path / "pair.png"
    assert app(["records", "curves", str(path), "--study", "s", "--study", "twin", "--out", str(out)],
               standalone_mode=False) in (0, None)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "twin: T=1 a=1/0/0: peak 40.00 at step 20, last 40.00 at step 20" in capsys.readouterr().out
    with pytest.raises(DistillLabError, match="no finished trial of study 'nope'"):
        curve_frame(path, ["s", "nope"])
