"""A worker's background writer: each completed trial's artifacts, written after Optuna is told.

Drawing the confusion matrix and writing the five artifacts is tracking work on a trial's critical
path; a worker hands it here once the trial's result is told, and starts its next trial meanwhile.
One thread, jobs in order; `drain` waits for all of them (a worker drains before it exits, also on
an interrupt). Each job ends its run FINISHED after its artifacts, so a FINISHED trial run always
has them. A worker killed -9 with a job pending leaves a COMPLETE trial beside a RUNNING run:
`end_orphan_runs` ends it and says its artifacts were lost.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)


class BackgroundWriter:
    """One thread that runs finishing jobs in the order they come; nothing is dropped before `drain`."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, job: Callable[[], None]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-lab-artifacts")
        self._pending = [future for future in self._pending if not future.done()]
        self._pending.append(self._executor.submit(_guarded, job))

    def drain(self) -> None:
        """Wait for every job submitted so far, then stop the thread (a later submit starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._pending.clear()

    @property
    def pending(self) -> int:
        return sum(not future.done() for future in self._pending)


def _guarded(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception as err:  # noqa: BLE001 - a finishing job must not take the worker down with it
        log.warning("finishing a trial run failed: %r", err)
