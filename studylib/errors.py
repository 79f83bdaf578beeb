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


@contextlib.contextmanager
def stop_on_signals(also: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn SIGINT and SIGTERM, and the signals in `also`, into `Interrupted` (signals reach
    the main thread only). A Slurm worker adds SIGUSR2: the warning before its time limit or a
    preemption (launchers/slurm.py)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    signals = (signal.SIGINT, signal.SIGTERM, *also)
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
