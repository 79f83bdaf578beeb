"""The errors every stage may raise, and how SIGINT / SIGTERM become one.

`ConfigError` is bad input: the CLI prints it as one line and exits 2. `Incomplete` is a sweep
that ended short of its study for a reason it has already said (one line, exit 1). `Interrupted`
is a signal turned into an exception, so a trial in progress is closed in Optuna and MLflow on
the way out instead of being left RUNNING. `disk_full` tells a write that found no space from
any other error, wherever in a library's chain of exceptions it hides.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections.abc import Iterator


class ConfigError(Exception):
    """Bad input, reported as one line before anything is written (exit code 2)."""


class Incomplete(Exception):
    """A sweep that ended before its study was complete, for reasons already shown (exit 1)."""


# A write refused for want of space: the disk, a quota, or the process's file size limit.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The same, as libraries word it when they wrap the OSError away (SQLite says the first).
DISK_FULL_TEXTS = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The exception in `exc`'s chain (causes and contexts) that says a write found no space,
    or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if any(text in str(exc) for text in DISK_FULL_TEXTS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (or a launcher's SIGUSR2): the current trial is closed in Optuna and
    MLflow, then the sweep stops."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Signals caught by stop_on_signals(at_safe_points=True), raised by the next `checkpoint()`.
_pending: list[int] = []


@contextlib.contextmanager
def stop_on_signals(also: tuple[int, ...] = (), *, at_safe_points: bool = False) -> Iterator[None]:
    """Turn SIGINT and SIGTERM, and the signals in `also`, into `Interrupted` (signals reach
    the main thread only). A Slurm worker adds SIGUSR2: the warning before its time limit or a
    preemption (launchers/slurm.py).

    `at_safe_points`: the signal is only noted, and `checkpoint()` raises it where nothing is
    half-written (between epochs, before a claim). Raised at once it can land inside a
    database commit, which then fails as a storage error instead of an interruption (seen with
    PostgreSQL: `scancel` mid-report gave "StorageInternalError ... during the commit" and a
    trial marked crashed). Sweeps and launched workers use it; a second signal before the next
    safe point raises at once (a process stuck where no safe point comes still stops)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if at_safe_points and not _pending:
            _pending.append(signum)
        else:
            raise Interrupted(signum)

    signals = (signal.SIGINT, signal.SIGTERM, *also)
    _pending.clear()
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    checkpoint()  # a signal noted after the last safe point is not forgotten on the way out


def checkpoint() -> None:
    """A safe point: raise `Interrupted` for a signal noted by stop_on_signals(at_safe_points)."""
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


def pending_signal() -> int | None:
    """The signal noted and not yet raised, if any."""
    return _pending[0] if _pending else None
