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
    """SIGINT or SIGTERM: the current trial is closed in Optuna and MLflow, then the sweep stops."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
