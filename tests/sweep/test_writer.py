"""The writer (sweep/writer.py) and the records it applies (tracking/records.py), in-process.

Killing it as a process: tests/sweep/test_faults.py (writer alone, writer and trainer)."""

from __future__ import annotations

import dataclasses
import threading
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from studylib.sweep import writer as writer_module
from studylib.sweep.claim import Outcome, heartbeat
from studylib.sweep.loops import open_records
from studylib.sweep.writer import Message, Piece, Writer
from studylib.tracking import RunRecord, Tracker, TrackingUnavailable, apply


def test_a_record_applied_twice_is_one_run_with_one_curve(settings):
    """A restarted writer applies again what its predecessor may have written: one run, each
    curve point once, params and tags as they were."""
    tracker = Tracker(settings.tracking_uri, "twice", settings.artifact_root)
    record = RunRecord(
        "key-1",
        name="trial-0000",
        tags={"studylib.role": "trial"},
        params={"model.dropout": "0.1"},
        metrics=[("val/loss", 1.0 / step, 1_700_000_000_000 + step, step) for step in (1, 2, 3)],
        files={"model.pt": b"weights"},
        status="FINISHED",
    )
    links: list[str] = []
    first = apply(tracker, record, {}, look_up=False, on_create=links.append)
    again = apply(tracker, record, {}, look_up=True, on_create=links.append)
    assert first == again and links == [first, first]
    client = MlflowClient(settings.tracking_uri)
    runs = client.search_runs([tracker.experiment_id])
    assert [run.info.run_id for run in runs] == [first]
    history = client.get_metric_history(first, "val/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert runs[0].data.params == {"model.dropout": "0.1"}
    assert runs[0].info.status == "FINISHED"


def _claimed(tiny, settings) -> tuple[optuna.Study, int]:
    exp, study, _, _ = open_records(tiny, settings)
    return study, study.ask().number


def test_an_outcome_is_told_only_after_its_records_are_written(tiny, settings, monkeypatch):
    """The tracker gives up on a trial's closing records: its outcome is never told (the trial
    stays RUNNING for the trainer to fail), and the trainer gets the tracker's error."""
    study, number = _claimed(tiny, settings)

    def unreachable(*args, **kwargs):
        raise TrackingUnavailable("MLflow tracking at x unavailable: could not close the run")

    monkeypatch.setattr(writer_module, "apply", unreachable)
    writer = Writer(tiny, settings, "thread")
    writer.submit(
        Message(
            [Piece(RunRecord("k", name="trial-0000"), number)], [Outcome(number, "complete", 0.5)]
        )
    )
    with pytest.raises(TrackingUnavailable, match="could not close the run"):
        writer.settle()
    writer.stop()
    assert study.trials[number].state == TrialState.RUNNING
    assert list(writer.unacked) == [1]  # what the trainer must fail itself


def test_a_full_queue_stalls_the_trainer_until_the_writer_catches_up(tiny, settings, monkeypatch):
    """Backpressure: with QUEUE_MESSAGES unwritten, handing over one more waits for the writer
    (a slow tracking server stalls training instead of filling memory)."""
    study, number = _claimed(tiny, settings)
    release = threading.Event()
    real_write = writer_module.write

    def slow_write(message, *args):
        release.wait(10)
        real_write(message, *args)

    monkeypatch.setattr(writer_module, "write", slow_write)
    monkeypatch.setattr(writer_module, "QUEUE_MESSAGES", 2)
    writer = Writer(tiny, settings, "thread")
    started = time.perf_counter()
    writer.submit(Message())
    writer.submit(Message())
    assert time.perf_counter() - started < 0.3  # room in the queue: no wait
    threading.Timer(0.6, release.set).start()
    started = time.perf_counter()
    writer.submit(Message(outcomes=[Outcome(number, "pruned")]))
    assert time.perf_counter() - started >= 0.5  # waited for the writer
    writer.close()
    assert not writer.unacked and writer.waited >= 0.5
    assert study.trials[number].state == TrialState.PRUNED  # told once written


def test_a_pruned_recorded_run_is_renamed_when_applied(settings):
    """A run recorded for the writer closes like a run written at once: pruned, its name says
    so (MLflow's status alone says FINISHED)."""
    from studylib.tracking import RecordedRun, close_interrupted_run

    sent: list[RunRecord] = []
    run = RecordedRun("trial 3: dropout 0.10", {}, None, sent.append, flush_seconds=60.0)
    close_interrupted_run(run, optuna.TrialPruned("pruned at epoch 4: val/loss 2.3"))
    tracker = Tracker(settings.tracking_uri, "pruned", settings.artifact_root)
    for piece in [*sent, run.final]:
        run_id = apply(tracker, piece, {}, look_up=True)
    got = MlflowClient(settings.tracking_uri).get_run(run_id)
    assert got.info.run_name == "trial 3 [pruned at epoch 4]: dropout 0.10"
    assert got.data.tags["studylib.status"] == "pruned" and got.info.status == "FINISHED"


def test_a_trial_waiting_in_a_stuck_writer_keeps_its_heartbeat(
    tiny, settings, tmp_path, monkeypatch
):
    """An outcome handed over but not yet told (the writer stuck on a tracking outage) keeps
    its trial's heartbeat: another worker's recovery leaves it RUNNING past the grace period,
    and once the writer gets through the trial is told as it ended."""
    settings = dataclasses.replace(
        settings, storage=f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_seconds=1
    )
    _, study, storage, _ = open_records(tiny, settings)
    number = study.ask().number
    release = threading.Event()
    real_write = writer_module.write

    def stuck_write(message, *args):
        release.wait(10)
        real_write(message, *args)

    monkeypatch.setattr(writer_module, "write", stuck_write)
    writer = Writer(tiny, settings, "thread")
    writer.submit(Message(outcomes=[Outcome(number, "complete", 0.5)]))
    assert writer.untold() == [number]
    with heartbeat(storage, study, writer.untold):
        time.sleep(3.5)  # past the grace period (2 heartbeats of 1 s)
        optuna.storages.fail_stale_trials(study)
        assert study.trials[number].state == TrialState.RUNNING
        release.set()
        writer.close()
    assert writer.untold() == []
    assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].value == 0.5
