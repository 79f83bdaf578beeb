"""The errors every stage may raise, and how SIGINT / SIGTERM become one.

`ConfigError` is bad input: the CLI prints it as one line and exits 2. `Interrupted` is a
signal turned into an exception, so a trial in progress is closed in Optuna and MLflow on the
way out instead of being left RUNNING.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class ConfigError(Exception):
    """Bad input, reported as one line before anything is written (exit code 2)."""


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
    trial marked crashed). Launched workers, whose normal end is a signal, use it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if at_safe_points:
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


def checkpoint() -> None:
    """A safe point: raise `Interrupted` for a signal noted by stop_on_signals(at_safe_points)."""
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


def pending_signal() -> int | None:
    """The signal noted and not yet raised, if any."""
    return _pending[0] if _pending else None
