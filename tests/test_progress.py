"""Study progress: rich bars in a terminal, plain timestamped lines where stdout is a file or pipe."""

from __future__ import annotations

import io

from rich.console import Console

from distill_lab.progress import StudyProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_redirected_output_gets_one_line_per_finished_trial_with_eta_and_stage_lines():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=200)  # a StringIO is not a terminal
    with StudyProgress(console, "grid", 4, 0, "done 0", clock=clock) as progress:
        for done in range(1, 101):
            progress.stage("distill", done, 100)
        clock.now += 60
        progress.study(1, "done 1  best 80.00 (#0)")
        progress.study(1, "done 1  best 80.00 (#0)")  # nothing new: no line
        clock.now += 60
        progress.study(2, "done 2  best 81.00 (#1)")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[0:00:00] study grid: 0/4 trials finished"
    stage = [line for line in lines if "distill:" in line]
    assert [line.split("distill: ")[1] for line in stage] == [f"{n}/100 steps" for n in (1, *range(10, 101, 10))]
    trials = [line for line in lines if "trials finished  done" in line]
    assert trials == ["[0:01:00] study grid: 1/4 trials finished  done 1  best 80.00 (#0)  ETA 0:03:00",
                      "[0:02:00] study grid: 2/4 trials finished  done 2  best 81.00 (#1)  ETA 0:02:00"]


def test_a_terminal_gets_bars_not_lines():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with StudyProgress(console, "grid", 2, 0, "done 0") as progress:
        progress.stage("distill", 5, 10)
        progress.study(1, "done 1")
    assert "trials finished" not in out.getvalue() and "study grid" in out.getvalue()


def test_a_single_run_redirected_prints_stage_lines_and_no_bars():
    from distill_lab.progress import StageProgress

    bars, lines, clock = io.StringIO(), io.StringIO(), Clock()
    with StageProgress(Console(file=bars, width=120), enabled=False, lines=Console(file=lines, width=120),
                       clock=clock) as progress:
        for done in range(1, 51):
            progress.update("teacher fine-tune", done, 50)
        clock.now += 75
        for done in range(1, 21):
            progress.update("distill", done, 20)
    assert bars.getvalue() == ""
    text = lines.getvalue().splitlines()
    assert text[0] == "[0:00:00] teacher fine-tune: 1/50 steps"
    assert [line.split("] ")[1] for line in text if "teacher" in line] == \
        [f"teacher fine-tune: {n}/50 steps" for n in (1, *range(5, 51, 5))]
    assert [line for line in text if "distill" in line][-1] == "[0:01:15] distill: 20/20 steps"


# --------------------------------------------------------------------------- a running trial's progress
class _Trial:
    def __init__(self) -> None:
        self.attrs: list[dict] = []

    def set_user_attr(self, key: str, value: dict) -> None:
        assert key == "progress"
        self.attrs.append(value)


def test_a_trial_writes_where_it_is_at_most_every_interval_and_at_each_stage_end():
    from distill_lab.study.objective import TrialProgress

    trial, seen = _Trial(), []
    report = TrialProgress(trial, seeds=3, every=1e9).stage(1, lambda *args: seen.append(args))
    for step in range(1, 6):
        report("distill", step, 5)
    assert len(seen) == 5  # the inner stage callback (a terminal's bars) still sees every step
    # The first step is written at once, the rest waits for the interval, except the stage's last step.
    assert trial.attrs == [{"seed": 2, "seeds": 3, "stage": "distill", "step": 1, "total": 5},
                           {"seed": 2, "seeds": 3, "stage": "distill", "step": 5, "total": 5}]


def test_a_storage_error_while_writing_progress_does_not_fail_the_trial():
    from distill_lab.study.objective import TrialProgress

    class Broken:
        def set_user_attr(self, key, value):
            raise ConnectionError("storage down")

    TrialProgress(Broken(), seeds=1, every=0).stage(0, None)("distill", 1, 2)  # no exception


def test_status_shows_a_running_trials_seed_step_and_time_left():
    import datetime

    import optuna
    from optuna.trial import TrialState

    from distill_lab.study.summary import progress_text

    started = datetime.datetime(2026, 12, 7, 1, 0, 0)
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
        "progress": {"seed": 2, "seeds": 3, "stage": "distill", "step": 657, "total": 1314}})
    trial.datetime_start = started
    # Half of the work done (one seed of three, and half of the second) in 10 minutes: 10 left.
    assert progress_text(trial, now=started + datetime.timedelta(minutes=10)) == \
        "seed 2/3 · distill 657/1314 · ~10 min left"
    # The seeds it has finished, with their kept dev F1, as the trial records them.
    trial.user_attrs["dev_f1_per_seed"] = {"1": 0.86114}
    assert progress_text(trial, now=started + datetime.timedelta(minutes=10)) == \
        "seed 2/3 · distill 657/1314 · ~10 min left · seed 1: 86.11"
    trial.user_attrs["dev_f1_per_seed"] = {"1": 0.86114, "2": 0.8618}
    trial.user_attrs["progress"] = {"seed": 3, "seeds": 3, "stage": "distill", "step": 0, "total": 1314}
    assert progress_text(trial, now=started + datetime.timedelta(minutes=20)) == \
        "seed 3/3 · distill 0/1314 · ~10 min left · seed 1: 86.11, seed 2: 86.18"
    trial.user_attrs.pop("dev_f1_per_seed")
    trial.user_attrs["progress"] = {"seed": 1, "seeds": 3, "stage": "teacher fine-tune", "step": 5, "total": 630}
    assert progress_text(trial, now=started) == "seed 1/3 · teacher fine-tune 5/630"  # no estimate yet
    # One step of the only seed after a minute of start-up: too early to say (it would read ~315 min).
    trial.user_attrs["progress"] = {"seed": 1, "seeds": 1, "stage": "distill", "step": 1, "total": 315}
    assert progress_text(trial, now=started + datetime.timedelta(minutes=1)) == "seed 1/1 · distill 1/315"
    trial.user_attrs["progress"] = {"seed": 1, "seeds": 1, "stage": "distill", "step": 63, "total": 315}
    assert progress_text(trial, now=started + datetime.timedelta(minutes=1)) == "seed 1/1 · distill 63/315 · ~4 min left"
    trial.user_attrs.pop("progress")
    assert progress_text(trial) == ""


def test_the_first_trial_showing_each_diagnosis_is_said_once_while_the_study_runs():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from distill_lab.study.summary import diagnosis_news, trials_table

    study = optuna.create_study(direction="maximize")

    def finish(temperature: float, value: float, diagnosis: str | None, state=TrialState.COMPLETE) -> None:
        attrs = {"diagnosis": diagnosis, "diagnosis_advice": f"advice for {diagnosis}"} if diagnosis else {}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            params={"distill.temperature": temperature},
            distributions={"distill.temperature": FloatDistribution(1.0, 20.0)}, user_attrs=attrs))

    said: set[str] = set()
    finish(1.0, 0.8812, "ok")
    assert diagnosis_news(study, said) == [] and said == set()
    finish(10.0, 0.8901, "weak-teacher")
    finish(15.0, 0.8899, "weak-teacher")
    finish(20.0, 0.41, "underfitting", state=TrialState.FAIL)  # only finished trials are read
    news = diagnosis_news(study, said)
    assert news == ["trial #1 (temperature=10, dev F1 89.01): diagnosis weak-teacher: advice for weak-teacher"]
    assert said == {"weak-teacher"} and diagnosis_news(study, said) == []
    finish(4.0, 0.52, "underfitting")
    assert diagnosis_news(study, said) == ["trial #4 (temperature=4, dev F1 52.00): diagnosis underfitting: advice for underfitting"]
    # `study status` shows every trial's diagnosis other than ok.
    assert [row["reason"] for row in trials_table(study)] == [
        "", "diagnosis: weak-teacher", "diagnosis: weak-teacher", "", "diagnosis: underfitting"]


def test_a_study_note_is_a_line_when_redirected():
    out = io.StringIO()
    with StudyProgress(Console(file=out, width=200), "grid", 2, 0, "done 0", clock=Clock()) as progress:
        progress.note("trial #0 (T=4, dev F1 52.00): diagnosis underfitting: train longer")
    assert "trial #0 (T=4, dev F1 52.00): diagnosis underfitting: train longer" in out.getvalue()
