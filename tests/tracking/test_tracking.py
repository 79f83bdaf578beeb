from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from studylib.tracking import Tracker, TrackingUnavailable
from studylib.tracking import store as tracking
from studylib.tracking.store import is_transient

PASSWORD = "pa55-w0rd-XYZ"


def test_epoch_metrics_are_written_in_batches(settings, monkeypatch):
    tracker = Tracker(settings.tracking_uri, "batched", settings.artifact_root)
    run = tracker.start_run("r", tags={"studylib.role": "trial"})
    calls = []
    real = run.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append((len(metrics), len(params), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(run.client, "log_batch", counting)
    for epoch in range(1, 101):
        run.log_epoch(epoch, {"train/loss": 1.0 / epoch, "val/loss": 2.0 / epoch})
    assert calls == []  # nothing written per epoch within FLUSH_SECONDS
    run.log_params({f"p{i}": i for i in range(250)})  # MLflow takes at most 100 per request
    run.finish("FINISHED")
    metric_calls = [c[0] for c in calls if c[0]]
    assert metric_calls == [200]
    assert [c[1] for c in calls if c[1]] == [100, 100, 50]

    client = MlflowClient(settings.tracking_uri)
    history = client.get_metric_history(run.run_id, "val/loss")
    assert [m.step for m in history] == list(range(1, 101))
    assert history[3].value == 0.5
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_flush_after_interval(settings, monkeypatch):
    tracker = Tracker(settings.tracking_uri, "timed", settings.artifact_root)
    run = tracker.start_run("r", tags={})
    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.0)
    run.log_epoch(1, {"val/loss": 1.0})
    assert MlflowClient(settings.tracking_uri).get_metric_history(run.run_id, "val/loss")


def test_experiment_is_created_once_with_local_artifacts(settings):
    first = Tracker(settings.tracking_uri, "same", settings.artifact_root)
    second = Tracker(settings.tracking_uri, "same", settings.artifact_root)
    assert first.experiment_id == second.experiment_id
    location = (
        MlflowClient(settings.tracking_uri).get_experiment(first.experiment_id).artifact_location
    )
    assert location == (settings.artifact_root.resolve() / "same").as_uri()


def test_finish_writes_curve_final_metrics_and_tags_in_one_batch(settings, monkeypatch):
    tracker = Tracker(settings.tracking_uri, "closing", settings.artifact_root)
    run = tracker.start_run("r", tags={})
    calls = []
    real = run.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append((len(metrics), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(run.client, "log_batch", counting)
    for epoch in range(1, 6):
        run.log_epoch(epoch, {"val/loss": 1.0 / epoch})
    run.finish("FINISHED", tags={"studylib.status": "completed"}, metrics={"test_acc": 0.75})
    assert calls == [(6, 1)]  # 5 epochs + 1 final metric, 1 tag: one transaction
    stored = MlflowClient(settings.tracking_uri).get_run(run.run_id)
    assert stored.data.metrics["test_acc"] == 0.75
    assert stored.data.tags["studylib.status"] == "completed"
    assert stored.info.status == "FINISHED"


def test_finish_with_only_tags_and_nothing_pending(settings):
    run = Tracker(settings.tracking_uri, "tags-only", settings.artifact_root).start_run("r", {})
    run.finish("FAILED", tags={"studylib.status": "diverged"})
    stored = MlflowClient(settings.tracking_uri).get_run(run.run_id)
    assert stored.data.tags["studylib.status"] == "diverged"
    assert stored.info.status == "FAILED"


def test_files_are_written_where_mlflow_lists_them(settings):
    run = Tracker(settings.tracking_uri, "files", settings.artifact_root).start_run("r", {})
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    run.log_files(json_files={"config.json": {"lr": 0.1}}, state_dicts={"model.pt": state})
    client = MlflowClient(settings.tracking_uri)
    assert sorted(a.path for a in client.list_artifacts(run.run_id)) == ["config.json", "model.pt"]
    folder = Path(client.download_artifacts(run.run_id, ""))
    assert json.loads((folder / "config.json").read_text()) == {"lr": 0.1}
    assert torch.equal(torch.load(folder / "model.pt")["w"], state["w"])


def test_local_sqlite_store_runs_in_wal_mode(settings):
    run = Tracker(settings.tracking_uri, "wal", settings.artifact_root).start_run("r", {})
    run.finish("FINISHED")
    path = settings.tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def locked_error() -> MlflowException:
    """What MLflow's SQLAlchemy store raises when SQLite stays locked past its busy timeout."""
    cause = sqlalchemy.exc.OperationalError(
        "INSERT INTO metrics ...", {}, sqlite3.OperationalError("database is locked")
    )
    return MlflowException(message=cause, error_code=TEMPORARILY_UNAVAILABLE)


def test_database_is_locked_is_retried_until_the_write_lands(settings, monkeypatch):
    tracker = Tracker(settings.tracking_uri, "locked", settings.artifact_root)
    run = tracker.start_run("r", tags={})
    real = run.client.log_batch
    failures = [locked_error(), locked_error()]

    def flaky(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(run.client, "log_batch", flaky)
    run.log_metrics({"val/loss": 0.5})
    assert tracker.retries == 2
    history = MlflowClient(settings.tracking_uri).get_metric_history(run.run_id, "val/loss")
    assert [m.value for m in history] == [0.5]  # written once, not once per try


def test_other_errors_are_not_retried(settings):
    tracker = Tracker(settings.tracking_uri, "strict", settings.artifact_root)
    run = tracker.start_run("r", tags={})
    run.log_params({"p": 1})
    with pytest.raises(MlflowException):
        run.log_params({"p": 2})  # params are immutable: a real error, raised at once
    assert tracker.retries == 0


def test_unreachable_server_gives_one_clear_error_without_the_password(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    uri = f"http://someone:{PASSWORD}@127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as raised:
        Tracker(uri, "down", retry_seconds=1.0)
    message = str(raised.value)
    assert time.monotonic() - started < 10
    assert PASSWORD not in message and "someone:***@127.0.0.1" in message
    assert "could not find the experiment" in message and "tries over" in message
    assert "\n" not in message


def test_a_tracker_that_gave_up_fails_fast(settings, monkeypatch):
    tracker = Tracker(settings.tracking_uri, "fast", settings.artifact_root, retry_seconds=0.2)
    run = tracker.start_run("r", tags={})
    monkeypatch.setattr(
        run.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(locked_error())
    )
    with pytest.raises(TrackingUnavailable):
        run.log_metrics({"a": 1.0})
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable):
        run.set_tags({"b": "2"})
    assert time.monotonic() - started < 0.05


def test_a_retried_create_never_makes_a_second_run(settings, monkeypatch):
    """The first create reached the store but its answer was lost: the retry finds that run."""
    tracker = Tracker(settings.tracking_uri, "dedupe", settings.artifact_root)
    real = tracker.client.create_run
    calls = []

    def lost_answer(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)
        if len(calls) == 1:
            raise MlflowException("API request to http://x/api/2.0/mlflow/runs/create failed")
        raise AssertionError("a second create_run was sent")

    monkeypatch.setattr(tracking, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(tracker.client, "create_run", lost_answer)
    run = tracker.start_run("once", tags={"studylib.role": "trial"})
    runs = MlflowClient(settings.tracking_uri).search_runs([tracker.experiment_id])
    assert [r.info.run_id for r in runs] == [run.run_id]


def test_transient_errors_are_told_apart():
    assert is_transient(locked_error())
    assert is_transient(MlflowException("API request to http://h/x failed with exception refused"))
    assert is_transient(MlflowException("x", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("Changing param values is not allowed"))
    assert not is_transient(
        MlflowException("API request to endpoint /x failed with error code 404 != 200")
    )
    assert is_transient(MlflowException("API request to endpoint /x failed with error code 503"))
    assert not is_transient(ValueError("database"))


def test_a_pruned_trial_says_so_in_its_name_and_the_best_tag_moves(settings):
    import optuna

    from studylib.tracking import close_interrupted_run

    tracker = Tracker(settings.tracking_uri, "named", settings.artifact_root)
    pruned = tracker.start_run("trial 3: dropout 0.20", tags={"studylib.role": "trial"})
    close_interrupted_run(pruned, optuna.TrialPruned("pruned at epoch 4: val/loss 1.2345"))
    run = tracker.client.get_run(pruned.run_id)
    # MLflow's status says FINISHED (a pruned trial is a result); the name says pruned.
    assert run.info.run_name == "trial 3 [pruned at epoch 4]: dropout 0.20"
    assert run.info.status == "FINISHED" and run.data.tags["studylib.status"] == "pruned"

    first, second = (tracker.start_run(f"trial {n}", tags={}) for n in (1, 2))
    tracker.mark_best(first.run_id)
    tracker.mark_best(second.run_id)
    tagged = tracker.search_runs("tags.`studylib.best` = 'true'")
    assert [r.info.run_id for r in tagged] == [second.run_id]


def test_params_are_those_the_data_set_reads(tiny):
    from studylib.config import Experiment
    from studylib.tracking import applicable_params, effective_params

    words = Experiment.model_validate(
        {"name": "w", "data": {"name": "words", "tokenizer": "char"}, "model": {"arch": "textcnn"}}
    )
    params = applicable_params(words)
    assert params["data.tokenizer"] == "char" and "data.languages" in params
    assert not {"data.length", "data.generation_seed", "data.vocab_size"} & set(params)
    assert "data.vocab_size" in applicable_params(words.with_values({"data.tokenizer": "bpe"}))
    mnist = applicable_params(tiny)
    assert "data.generation_seed" in mnist and "data.tokenizer" not in mnist
    assert set(applicable_params(tiny)) - set(tiny.flat()) == set()
    off = effective_params(tiny.with_values({"train.l1": 0.0, "train.early_stopping": False}))
    assert off["effective.l1"] == 0.0 and off["effective.patience"] == "off"


def test_system_metrics_are_sampled_into_the_run_while_the_block_runs(settings, monkeypatch):
    # MLflow's own knobs: sample every 0.2 s and log each sample (default: every 10 s).
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    tracker = Tracker(settings.tracking_uri, "exp")
    run = tracker.start_run("sweep", tags={})
    with tracker.system_metrics(run.run_id):
        time.sleep(1.5)
    client = MlflowClient(settings.tracking_uri)
    metrics = client.get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        metrics
    )
    assert len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) >= 2
    assert metrics["system/system_memory_usage_megabytes"] > 0
