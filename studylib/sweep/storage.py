"""Optuna storage: a journal file on one machine, a database (PostgreSQL) across machines.

A journal is a file of JSON records, one a line, appended under a lock. What a power cut, a
full disk or a killed writer can leave is a torn tail: a last line cut short (or, from older
versions, a record appended onto such a line). Optuna stops reading at the first line that is
not a whole record, and raises once another line follows it, so a torn journal used to lock
its study for good. Here it is repaired when it is opened: the bytes from the first line that
is not a whole record to the end move to a side file (`optuna.journal.torn-<time>`) named in
a one-line warning, and the study continues from its last whole record. Nothing any process
had read is lost: Optuna never reads past a torn line, so whatever followed one was never part
of the study. A write that fails (a full disk) is undone before the error is raised, so it
cannot leave a torn line behind for the next writer to append onto.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from studylib.console import say
from studylib.locations import parse_storage

HEARTBEAT_SECONDS = 60  # RDB storage: a worker's trial is stale after 2 missed heartbeats
# How long a trial may go without a heartbeat before it is failed, in heartbeat intervals
# (Optuna's own default). A watcher looks every half interval (claim.watch), so a killed
# worker's trial is failed within 2.5 intervals of its death.
GRACE_HEARTBEATS = 2
MAX_RETRIES = 3  # a trial that failed through no fault of its own runs again at most this often
TORN_SUFFIX = ".torn"


def make_storage(
    url_or_path: str, heartbeat_seconds: int = HEARTBEAT_SECONDS
) -> optuna.storages.BaseStorage:
    """A database URL gives Optuna's RDB storage; a file path, a (repaired) journal.

    On a database every trial sends a heartbeat; one silent for GRACE_HEARTBEATS intervals is
    failed by the next worker that looks, and queued again with the same parameters.
    """
    location = parse_storage(url_or_path)
    if location.kind == "journal":
        return open_journal(str(location.path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RDBStorage(
            location.text,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_seconds,
            grace_period=GRACE_HEARTBEATS * heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES
            ),
        )


def open_journal(path: str) -> optuna.storages.JournalStorage:
    """The journal at `path`, its torn tail (if any) repaired first."""
    backend = JournalFile(path)
    try:
        return optuna.storages.JournalStorage(backend)
    except ValueError:  # json.JSONDecodeError too: a torn line with whole ones after it
        backend.repair(whole_file=True)
        return optuna.storages.JournalStorage(backend)


@dataclass(frozen=True)
class Repair:
    """What `repair_journal` did: the bytes it moved and where they went."""

    offset: int  # where the journal now ends (the end of its last whole record)
    moved: int  # bytes moved to the side file (0: only a missing final newline restored)
    side_file: Path | None
    records_after: int  # whole records that followed the torn line (moved with it)

    def describe(self, path: str) -> str:
        if self.side_file is None:
            return f"{path}: its last record lacked its newline; restored"
        after = (
            f", with {self.records_after} record(s) written after the torn line (never read: "
            "Optuna stops at a torn line)"
            if self.records_after
            else ""
        )
        return (
            f"{path}: torn tail repaired: {self.moved} bytes from byte {self.offset}{after} "
            f"moved to {self.side_file}; the study continues from its last whole record"
        )


def is_record(line: bytes) -> bool:
    """A whole journal record: one JSON object with an operation code (a prefix of a JSON
    object never decodes, so a record that decodes was written whole)."""
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and "op_code" in record


def tail_is_whole(path: Path) -> bool:
    """Cheap check of the last line only: the common case costs one small read."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return True
        block = 4096
        while True:
            start = max(0, size - block)
            file.seek(start)
            tail = file.read(size - start)
            if not tail.endswith(b"\n"):
                return False
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0 or start == 0:
                return is_record(tail[cut + 1 :])
            block *= 4


def repair_journal(path: Path) -> Repair | None:
    """Cut the journal at its first line that is not a whole record; the rest moves to a side
    file beside it. None when every line is whole. The caller holds the journal's write lock.

    A last line that decodes but lacks its newline is whole: the newline is restored instead.
    """
    offset, cut, records_after = 0, None, 0
    with open(path, "rb") as file:
        for line in file:
            if cut is not None:
                records_after += line.endswith(b"\n") and is_record(line)
            elif line.endswith(b"\n") and is_record(line):
                offset += len(line)
            elif not line.endswith(b"\n") and is_record(line):
                with open(path, "ab") as out:  # the one way a final record lacks its newline
                    out.write(b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                return Repair(offset + len(line) + 1, 0, None, 0)
            else:
                cut = offset
    if cut is None:
        return None
    with open(path, "rb") as file:
        file.seek(cut)
        torn = file.read()
    side = _side_file(path)
    with open(side, "xb") as out:  # written and on disk before the journal is cut
        out.write(torn)
        out.flush()
        os.fsync(out.fileno())
    with open(path, "r+b") as file:
        file.truncate(cut)
        file.flush()
        os.fsync(file.fileno())
    return Repair(cut, len(torn), side, records_after)


def _side_file(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for number in range(1, 1000):
        side = path.with_name(f"{path.name}{TORN_SUFFIX}-{stamp}" + (f"-{number}" * (number > 1)))
        if not side.exists():
            return side
    raise FileExistsError(f"{path}: a thousand side files of this second already exist")


class JournalFile(JournalFileBackend):
    """Optuna's journal file: repaired on open, each record appended under its lock but
    without an fsync, a failed append undone.

    A trial writes about ten records (its creation, each parameter, its attributes, its end);
    Optuna fsyncs every one, 4 ms each on the disk `make bench` measured: 40 ms a trial, most
    of studylib's overhead per trial. Without the fsync, a record is in the operating
    system's cache when the write returns: a killed process loses nothing; a power cut may
    lose the last records and tear the last line, which the next open repairs (see the module
    docstring). The same guarantee as SQLite's WAL + synchronous=NORMAL used for MLflow.
    """

    def __init__(self, path: str):
        self._path = path
        self._write_lock = JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self._write_lock)
        self.repair(whole_file=False)

    def repair(self, whole_file: bool) -> Repair | None:
        """Under the write lock (no append is half done): check the tail, or every line, and
        repair. The warning names the side file."""
        self._write_lock.acquire()
        try:
            if not whole_file and tail_is_whole(Path(self._path)):
                return None
            repair = repair_journal(Path(self._path))
        finally:
            self._write_lock.release()
        if repair is not None:
            say(repair.describe(self._path))
        return repair

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self._write_lock.acquire()
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                end = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:  # a full disk may take part of a write, then refuse the rest
                        view = view[os.write(fd, view) :]
                except OSError:
                    os.ftruncate(fd, end)  # no torn record left for the next writer
                    raise
            finally:
                os.close(fd)
        finally:
            self._write_lock.release()


class JournalReader(JournalFileBackend):
    """A journal read without writing anything (the report): no lock, no repair; reading
    stops at the first line that is not a whole record, as Optuna's own reader would."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        super().__init__(path)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        with open(self._file_path, "rb") as file:
            for number, line in enumerate(file):
                if not (line.endswith(b"\n") and is_record(line)):
                    return
                if number >= log_number_from:
                    yield json.loads(line)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise PermissionError(f"{self._file_path}: opened for reading only")
