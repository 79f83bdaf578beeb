"""Exclusive locks across worker processes, held for milliseconds around a study's bookkeeping.

Optuna and MLflow each make single writes atomic, but studylib needs a few steps to happen as one:
"count the trials, then start one" (else N workers starting together overshoot the requested
total), "create the study, store its settings, queue the baseline" (else the baseline is queued
twice), and "create MLflow's tables in a fresh database" (MLflow's SQLite initialization races:
four processes opening a new mlflow.db at once crash with "duplicate column name: step").

- a journal file (one machine): `flock` on the journal file itself; the kernel drops the lock
  when its holder dies, even by `kill -9`;
- `sqlite:///path`: `flock` on `path.studylib-lock` beside the database;
- `postgresql://...` (many machines): a PostgreSQL advisory lock on its own connection; the
  server drops it when that connection dies, and TCP keepalives notice a vanished machine in
  about half a minute.
Other database URLs get no lock (a warning says so): use PostgreSQL for many machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.pool import NullPool

from studylib.redact import redact

WAIT_SECONDS = 300.0  # a lock is held for milliseconds: waiting this long means a hung holder
LOCK_SUFFIX = ".studylib-lock"


class LockTimeout(RuntimeError):
    pass


@contextlib.contextmanager
def exclusive(
    target: str,
    name: str,
    *,
    wait_seconds: float = WAIT_SECONDS,
    on_wait: Callable[[], None] | None = None,
    apart: bool = False,
) -> Iterator[None]:
    """Hold the lock `name` of `target` (a journal path or a database URL) for the block.

    `apart`: a lock of its own for a long hold (an ablation arm's tuning, minutes), not the
    file's lock that every claim takes (on PostgreSQL every name is a lock of its own anyway);
    `on_wait` runs while waiting (a stop signal raised there), `wait_seconds` bounds the wait."""
    wait = functools.partial(_wait_for, seconds=wait_seconds, on_wait=on_wait)
    if target.startswith("postgresql"):
        with _advisory_lock(target, name, wait):
            yield
    elif target.startswith("sqlite:///"):
        path = target.removeprefix("sqlite:///")
        with _file_lock(Path(path + _apart(name, apart) + LOCK_SUFFIX), wait):
            yield
    elif "://" in target:
        warnings.warn(
            f"{redact(target)}: no cross-process lock for this database; several workers on "
            "one study may overshoot the trial count (use PostgreSQL or a journal file)",
            stacklevel=3,
        )
        yield
    else:
        path = Path(target + _apart(name, apart) + LOCK_SUFFIX) if apart else Path(target)
        with _file_lock(path, wait):
            yield


def _apart(name: str, apart: bool) -> str:
    """The suffix of a lock file of its own for `name` (none unless `apart`)."""
    return f".{hashlib.sha256(name.encode()).hexdigest()[:12]}" if apart else ""


@contextlib.contextmanager
def _file_lock(path: Path, wait: Callable[..., None] | None = None) -> Iterator[None]:
    wait = wait or _wait_for
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:  # creates the file; never truncates a journal
        wait(lambda: _try_flock(handle), path.name)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_flock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@functools.cache
def _engine(url: str) -> sqlalchemy.Engine:
    # NullPool: a connection per acquisition, closed on release, so no idle connection lingers.
    return sqlalchemy.create_engine(
        url,
        poolclass=NullPool,
        connect_args={"keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3},
    )


def _advisory_key(name: str) -> int:
    digest = hashlib.sha256(f"studylib:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(url: str, name: str, wait: Callable[..., None] | None = None) -> Iterator[None]:
    wait = wait or _wait_for
    key = _advisory_key(name)
    with _engine(url).connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        take = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
        wait(lambda: bool(conn.execute(take, {"key": key}).scalar()), f"advisory {name}")
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def _wait_for(
    try_once,
    what: str,
    seconds: float = WAIT_SECONDS,
    on_wait: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    delay = 0.005
    while not try_once():
        if time.monotonic() > deadline:
            raise LockTimeout(f"lock {what} held by another worker for over {seconds:.0f} s")
        if on_wait is not None:
            on_wait()
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
