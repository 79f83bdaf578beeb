"""Optuna storage: a journal file on one machine, a database (PostgreSQL) across machines."""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

HEARTBEAT_SECONDS = 60  # RDB storage: a worker's trial is stale after 3 missed heartbeats
MAX_RETRIES = 3  # a trial that failed through no fault of its own runs again at most this often


def make_storage(
    url_or_path: str, heartbeat_seconds: int = HEARTBEAT_SECONDS
) -> optuna.storages.BaseStorage:
    """A database URL gives Optuna's RDB storage; anything else is a journal file path.

    On a database every trial sends a heartbeat; one silent for 3 intervals is failed by the
    next worker that looks, and queued again with the same parameters.
    """
    if "://" in url_or_path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url_or_path,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_seconds,
                grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES
                ),
            )
    return optuna.storages.JournalStorage(JournalFile(url_or_path))


class JournalFile(JournalFileBackend):
    """Optuna's journal file, each record appended under its lock but without an fsync.

    A trial writes about ten records (its creation, each parameter, its attributes, its end);
    Optuna fsyncs every one, 4 ms each on the disk `make bench` measured: 40 ms a trial, most
    of studylib's overhead per trial. Without the fsync, a record is in the operating
    system's cache when the write returns: a killed process loses nothing; a power cut may
    lose the last records, never corrupt the file (a torn last line is skipped on reading).
    The same guarantee as SQLite's WAL + synchronous=NORMAL used for MLflow (tracking.py).
    """

    def __init__(self, path: str):
        self._path = path
        self._write_lock = JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self._write_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._write_lock.acquire()
        try:
            with open(self._path, "ab") as file:
                file.write(text.encode("utf-8"))
        finally:
            self._write_lock.release()
