"""Signals as interrupts: SIGTERM like Ctrl-C, and blocks that must not be cut by either."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


def interrupt_once() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt the first time only, then are ignored.

    For worker processes: a Ctrl-C reaches them with the rest of the terminal's process group and
    their coordinator's SIGTERM follows; one interrupt must not cut the clean-up of the first.
    """
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt(f"signal {signum}")

    # A SIGINT its coordinator ignores (started under nohup, or in the background of a script) is
    # ignored here too: a Ctrl-C must not stop the workers while their coordinator carries on.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def sigterm_interrupts() -> None:
    """SIGTERM (docker stop, systemd, Kubernetes) raises KeyboardInterrupt like Ctrl-C: runs end KILLED, trials FAIL."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold SIGINT / SIGTERM back for the block; raise KeyboardInterrupt after it if one came.

    Yields the list of signals received so far, so the block can see whether it was interrupted.
    Outside the main thread (where handlers cannot be set) the block runs unprotected.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    for signum in previous:
        signal.signal(signum, hold)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")
