"""The journal: a torn tail is repaired on open, a failed append leaves nothing behind.

A power cut, a full disk or a killed writer can cut the journal's last record anywhere; the
repair must give, at every such offset, the study as it was before that record, the cut bytes
in a side file, one line saying so, and a journal Optuna reads and appends to again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studylib.errors import disk_full
from studylib.sweep import storage as storage_module
from studylib.sweep.storage import (
    JournalFile,
    JournalReader,
    is_record,
    open_journal,
    repair_journal,
    tail_is_whole,
)


@pytest.fixture(scope="module")
def journal_bytes(tmp_path_factory) -> bytes:
    """A finished little study: two trials, the second's last record the one we cut."""
    path = tmp_path_factory.mktemp("journal") / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=open_journal(str(path)))
    for x in (0.25, 0.75):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        study.tell(trial, x)
    return path.read_bytes()


def trials_of(path: Path) -> list[tuple[TrialState, float | None]]:
    study = optuna.load_study(study_name="s", storage=open_journal(str(path)))
    return [(t.state, t.value) for t in study.get_trials(deepcopy=False)]


def test_repair_at_every_byte_offset_of_the_last_record(tmp_path, journal_bytes, capsys):
    start = journal_bytes.rindex(b"\n", 0, len(journal_bytes) - 1) + 1  # the last record
    last = journal_bytes[start:]
    assert is_record(last) and len(last) > 20
    before = tmp_path / "before.journal"
    before.write_bytes(journal_bytes[:start])
    study_before = trials_of(before)
    assert study_before[-1][0] == TrialState.RUNNING  # the cut record is the last trial's tell
    (tmp_path / "whole.journal").write_bytes(journal_bytes)
    study_whole = trials_of(tmp_path / "whole.journal")
    capsys.readouterr()

    for keep in range(len(last) + 1):
        folder = tmp_path / f"cut-{keep}"
        folder.mkdir()
        path = folder / "optuna.journal"
        path.write_bytes(journal_bytes[: start + keep])
        assert tail_is_whole(path) == (keep in (0, len(last)))
        study = trials_of(path)  # opens (and repairs) the journal
        said = capsys.readouterr().err.splitlines()
        side_files = sorted(folder.glob("optuna.journal.torn-*"))
        if keep in (0, len(last)):  # cut between records: nothing to repair
            assert said == [] and side_files == []
            assert path.read_bytes() == journal_bytes[: start + keep]
        elif keep == len(last) - 1:  # only the newline is missing: the record is whole
            assert said == [f"studylib: {path}: its last record lacked its newline; restored"]
            assert side_files == [] and path.read_bytes() == journal_bytes
        else:  # torn: the cut bytes move to the side file, the journal ends at a record
            assert len(said) == 1 and said[0].startswith(f"studylib: {path}: torn tail repaired")
            assert f"moved to {side_files[0]}" in said[0], said
            assert side_files[0].read_bytes() == last[:keep]
            assert path.read_bytes() == journal_bytes[:start]
        expected = study_whole if keep >= len(last) - 1 else study_before
        assert study == expected, keep
        # And the study goes on: the journal takes new records and reads back whole.
        resumed = optuna.load_study(study_name="s", storage=open_journal(str(path)))
        resumed.enqueue_trial({"x": 0.5})
        assert all(is_record(line) for line in path.read_bytes().splitlines(keepends=True))


def test_a_torn_line_with_records_after_it_moves_them_too(tmp_path, journal_bytes, capsys):
    """What older versions left: a record appended onto a torn line, more records after.
    Optuna raises on such a file; no process ever read past the torn line."""
    lines = journal_bytes.splitlines(keepends=True)
    torn = lines[3][:17] + lines[4]  # a torn record with a whole one appended onto it
    path = tmp_path / "optuna.journal"
    path.write_bytes(b"".join(lines[:3]) + torn + b"".join(lines[5:]))
    with pytest.raises(ValueError):  # what Optuna alone does with it
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    assert tail_is_whole(path)  # the cheap check cannot see it: the open falls back to a scan
    storage = open_journal(str(path))
    said = capsys.readouterr().err
    assert f"with {len(lines) - 5} record(s) written after the torn line" in said
    assert path.read_bytes() == b"".join(lines[:3])
    side = next(tmp_path.glob("optuna.journal.torn-*"))
    assert side.read_bytes() == torn + b"".join(lines[5:])
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]


def test_repair_leaves_a_whole_journal_alone(tmp_path, journal_bytes):
    path = tmp_path / "optuna.journal"
    path.write_bytes(journal_bytes)
    assert repair_journal(path) is None and path.read_bytes() == journal_bytes
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_append_is_undone(tmp_path, journal_bytes, monkeypatch):
    """A disk that fills mid-write takes part of the record, then refuses: the part is cut
    away again, so no torn line is left for the next writer to append onto."""
    path = tmp_path / "optuna.journal"
    path.write_bytes(journal_bytes)
    backend = JournalFile(str(path))
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "write", full_disk)
    with pytest.raises(OSError) as caught:
        backend.append_logs(
            [{"op_code": 0, "worker_id": "w", "study_name": "t", "directions": [1]}]
        )
    monkeypatch.undo()
    assert len(calls) == 2 and disk_full(caught.value) is caught.value
    assert path.read_bytes() == journal_bytes
    assert not (tmp_path / "optuna.journal.lock").exists()  # the lock was released


def test_the_reader_writes_nothing_and_stops_at_a_torn_line(tmp_path, journal_bytes):
    path = tmp_path / "optuna.journal"
    path.write_bytes(journal_bytes[:-30])
    storage = optuna.storages.JournalStorage(JournalReader(str(path)))
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert path.read_bytes() == journal_bytes[:-30] and list(tmp_path.iterdir()) == [path]
    with pytest.raises(FileNotFoundError):
        JournalReader(str(tmp_path / "absent.journal"))
    assert list(tmp_path.iterdir()) == [path]
