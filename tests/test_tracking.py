from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import torch
from mlflow import MlflowClient

from studylib import tracking
from studylib.tracking import Tracker


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
