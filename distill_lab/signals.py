"""Signals as interrupts: SIGTERM like Ctrl-C, and blocks that must not be cut by either."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


# Every interrupt this process received. Python swallows an exception raised while it runs a
# finaliser or a weakref callback ("Exception ignored in ..."): a KeyboardInterrupt that lands there
# is lost, so the loops that must stop look here as well (`interrupted()`).
_RECEIVED: list[int] = []
# A worker process stops on its first interrupt; later ones (a terminal's Ctrl-C reaches it, then
# its coordinator forwards SIGTERM) are recorded but must not cut the cleanup the first one started
# (failing its trial, ending its run KILLED). Its coordinator kills a worker that does not stop.
_FIRST_ONLY: list[bool] = [False]


def _raises(earlier: int) -> bool:
    """Whether a signal that arrived after `earlier` recorded interrupts raises KeyboardInterrupt."""
    return not (_FIRST_ONLY[0] and earlier)


def _interrupt(signum: int, frame: Any) -> None:
    earlier = len(_RECEIVED)
    _RECEIVED.append(signum)
    if _raises(earlier):
        raise KeyboardInterrupt(f"signal {signum}")


def interrupted() -> bool:
    """Whether an interrupt arrived (even one whose KeyboardInterrupt was swallowed)."""
    return bool(_RECEIVED)


def reset_interrupts() -> None:
    """Forget earlier interrupts: a new study run in this process (a notebook, a test) starts clean."""
    _RECEIVED.clear()
    _FIRST_ONLY[0] = False


def worker_interrupts() -> None:
    """A worker process: SIGINT and SIGTERM raise KeyboardInterrupt (and are recorded).

    A SIGINT its coordinator ignores (started under nohup, or in the background of a script) stays
    ignored: a Ctrl-C must not stop the workers while their coordinator carries on. Only the first
    interrupt raises: the worker is already stopping when the next one comes.
    """
    reset_interrupts()
    _FIRST_ONLY[0] = True
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def sigterm_interrupts() -> None:
    """SIGTERM (docker stop, systemd, Kubernetes) raises KeyboardInterrupt like Ctrl-C: runs end KILLED, trials FAIL."""
    reset_interrupts()
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _interrupt):
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold SIGINT / SIGTERM back for the block; raise KeyboardInterrupt after it if one came.

    Yields the list of signals received so far, so the block can see whether it was interrupted.
    Outside the main thread (where handlers cannot be set) the block runs unprotected.
    """
    received: list[int] = []
    earlier = len(_RECEIVED)
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)
        _RECEIVED.append(signum)

    for signum in previous:
        signal.signal(signum, hold)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received and _raises(earlier):
        raise KeyboardInterrupt(f"signal {received[0]}")
