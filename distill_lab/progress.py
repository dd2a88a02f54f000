"""Rich progress bars for the long stages (teacher fine-tune, distillation)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageLines:
    """Plain timestamped stage lines for a console that is not a terminal: at a stage's start, every
    10 % of its steps and at its end (a stage restarts when `done` drops back to 1)."""

    def __init__(self, console: Console, clock: Any = None):
        self._console, self._clock = console, clock or time.monotonic
        self._started = self._clock()
        self._marks: dict[str, int] = {}

    def line(self, text: str) -> None:
        self._console.print(f"[{_clock(self._clock() - self._started)}] {text}", highlight=False, markup=False,
                            soft_wrap=True)

    def stage(self, name: str, done: int, total: int) -> None:
        tenth = max(1, total // 10)
        mark = 0 if done <= 1 else done // tenth
        if done <= 1 or done >= total or mark > self._marks.get(name, 0):
            self._marks[name] = 0 if done >= total else mark
            self.line(f"{name}: {done}/{total} steps")


class StageProgress:
    """One bar per stage name; `update(stage, done, total)` is the pipeline's stage callback.

    `lines`: a console to print plain stage lines to instead (stdout redirected: CI, nohup, pipes).
    """

    def __init__(self, console: Console, *, enabled: bool = True, transient: bool = False,
                 lines: Console | None = None, clock: Any = None):
        self._progress = Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled, transient=transient)
        self._tasks: dict[str, Any] = {}
        self._lines = StageLines(lines, clock) if lines is not None else None

    def __enter__(self) -> "StageProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, stage: str, done: int, total: int) -> None:
        if self._lines is not None:
            self._lines.stage(stage, done, total)
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StudyProgress:
    """A study's progress: rich bars (study bar with ETA, one bar per stage) in a terminal; plain
    timestamped lines where stdout is a file or a pipe (CI, nohup, `docker compose run`), where
    rich would print nothing until the end: one line per finished trial, and stage lines at start,
    every 10 % and at the end."""

    def __init__(self, console: Console, name: str, total: int, finished: int, info: str, *,
                 clock: Any = None):
        self._console, self._name, self._total = console, name, total
        self._clock = clock or time.monotonic
        self._started, self._first = self._clock(), finished
        self._last_finished = finished
        self._lines = not console.is_terminal
        self._stage_lines = StageLines(console, self._clock)
        self._progress = Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=self._lines)
        self._study = self._progress.add_task("study " + name[:12], total=total, completed=finished, info=info)
        self._stages: dict[str, Any] = {}

    def __enter__(self) -> "StudyProgress":
        self._progress.__enter__()
        if self._lines:
            self._line(f"study {self._name}: {self._last_finished}/{self._total} trials finished")
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def _line(self, text: str) -> None:
        self._stage_lines.line(text)

    def study(self, finished: int, info: str) -> None:
        self._progress.update(self._study, completed=finished, info=info)
        if self._lines and finished != self._last_finished:
            self._last_finished = finished
            done_here = finished - self._first
            elapsed = self._clock() - self._started
            eta = elapsed / done_here * (self._total - finished) if done_here > 0 else None
            self._line(f"study {self._name}: {finished}/{self._total} trials finished  {info}"
                       + (f"  ETA {_clock(eta)}" if eta is not None and finished < self._total else ""))

    def note(self, text: str) -> None:
        """A line the study has to say (above the bars in a terminal)."""
        if self._lines:
            self._line(text)
        else:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def stage(self, name: str, done: int, total: int) -> None:
        # One bar per stage, restarted for every trial (done drops back to 1).
        if name not in self._stages:
            self._stages[name] = self._progress.add_task(name, total=total, info="steps")
        elif done <= 1:
            self._progress.reset(self._stages[name], total=total)
        self._progress.update(self._stages[name], completed=done, total=total)
        if self._lines:
            self._stage_lines.stage(name, done, total)
