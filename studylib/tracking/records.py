"""A run's MLflow writes as data: what a trainer hands to a writer instead of writing itself.

`RecordedRun` has `Run`'s interface (params, tags, per-epoch metrics, closing batch, files,
dataset inputs, status), so a trial's MLflow life (trial_run.py) is the same code whether it is
written at once or recorded; each call fills a `RunRecord`, plain picklable data. `apply`
writes a record through `Run` and the tracker's retries, in as few store round trips as MLflow's
public API allows: `create_run` (with the tags), one `log_batch` per 100 params, 100 tags or 1000
metrics (params, tags and metrics of one record share batches), the files (written in place on a
local artifact store), `log_inputs`, and `set_terminated`.

Records are generic on purpose: whatever else a trial comes to write (a description, more tags,
dataset inputs) is a field of the record, so the writer's process plumbing never changes for it.
A record is idempotent to apply twice (a writer restarted after a `kill -9` applies again what
its predecessor may have half written): the run is found again by its key tag, identical params
and tags are accepted again by MLflow, and a metric identical in key, value, step and timestamp
is stored once.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from mlflow.entities import Metric

from studylib.names import RUN_NAME_TAG
from studylib.tracking.store import Run, Tracker


@dataclass
class RunRecord:
    """One piece of a run's MLflow life. `name` set: the piece that creates the run."""

    key: str  # the run's RUN_KEY_TAG: how a restarted writer finds the run again
    name: str | None = None
    parent_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    json_files: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # e.g. model.pt, torch.save'd
    inputs: list[Any] = field(default_factory=list)  # mlflow.entities.DatasetInput
    status: str | None = None  # set: the run ends with this MLflow status

    def empty(self) -> bool:
        return not (
            self.name
            or self.tags
            or self.params
            or self.metrics
            or self.json_files
            or self.files
            or self.inputs
            or self.status
        )


class RecordedRun:
    """A run whose writes are recorded, for a writer to apply (`Run`'s interface).

    `send(record)` hands a piece on while the run trains: the creating piece at the first
    epoch, then the curve every FLUSH_SECONDS, so a long trial shows in MLflow as it trains.
    The closing piece (`finish`) is kept in `final` for the caller to hand on together with
    the trial's Optuna outcome.
    """

    run_id: str | None = None  # known to the writer only

    def __init__(
        self,
        name: str,
        tags: dict[str, str],
        parent_id: str | None,
        send: Callable[[RunRecord], None],
        flush_seconds: float,
    ):
        self.key = uuid.uuid4().hex
        self.name = name  # as Run.name: a pruned run's closing renames it
        self._send = send
        self._flush_seconds = flush_seconds
        self._piece = RunRecord(self.key, name=name, parent_id=parent_id, tags=dict(tags))
        self._last_flush = time.monotonic()
        self.final: RunRecord | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        self._piece.params.update({key: str(value) for key, value in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._piece.tags.update({key: str(value)[:5000] for key, value in tags.items()})

    def log_inputs(self, datasets: list[Any]) -> None:
        self._piece.inputs.extend(datasets)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._piece.metrics.extend((k, float(v), now, step) for k, v in metrics.items())
        if (
            self._piece.name is not None
            or time.monotonic() - self._last_flush >= self._flush_seconds
        ):
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._piece.metrics.extend((k, float(v), now, step) for k, v in metrics.items())

    def take(self) -> RunRecord:
        """What is recorded so far, for the caller to hand on (a population's runs together)."""
        piece, self._piece = self._piece, RunRecord(self.key)
        self._last_flush = time.monotonic()
        return piece

    def flush(self) -> None:
        """Hand on what is recorded so far (nothing is written here)."""
        piece = self.take()
        if not piece.empty():
            self._send(piece)

    def log_json(self, name: str, payload: Any) -> None:
        self.log_files(json_files={name: payload})

    def log_state_dict(self, state_dict: dict[str, torch.Tensor], name: str = "model.pt") -> None:
        self.log_files(state_dicts={name: state_dict})

    def log_files(
        self,
        json_files: dict[str, Any] | None = None,
        state_dicts: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self._piece.json_files.update(json_files or {})
        for name, state_dict in (state_dicts or {}).items():
            buffer = io.BytesIO()  # the bytes torch.save would write to the file
            torch.save(state_dict, buffer)
            self._piece.files[name] = buffer.getvalue()

    def closing(
        self, tags: dict[str, Any] | None = None, metrics: dict[str, float] | None = None
    ) -> None:
        self.set_tags(tags or {})
        self.log_metrics(metrics or {})

    def finish(
        self,
        status: str,
        tags: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Keep the closing piece (with the creating one, if never handed on) in `final`."""
        self.closing(tags, metrics)
        self._piece.status = status
        self.final, self._piece = self._piece, RunRecord(self.key)


class Recorder:
    """`Tracker.start_run` for recorded runs: what a trainer passes where a tracker goes."""

    def __init__(self, send: Callable[[RunRecord], None], flush_seconds: float):
        self._send = send
        self._flush_seconds = flush_seconds
        self.started: list[RecordedRun] = []

    def start_run(
        self, run_name: str, tags: dict[str, str], parent_id: str | None = None
    ) -> RecordedRun:
        run = RecordedRun(run_name, tags, parent_id, self._send, self._flush_seconds)
        self.started.append(run)
        return run


def apply(
    tracker: Tracker,
    record: RunRecord,
    known: dict[str, tuple[str, str | None]],
    look_up: bool,
    on_create: Callable[[str], None] | None = None,
) -> str:
    """Write one record; its run id. `known`: (run id, artifact URI) by key, of the runs this
    writer has seen. `look_up`: a run of an unknown key may exist already (a restarted writer
    re-applies what its predecessor may have half written): find it first. `on_create(run_id)`
    runs as soon as the run exists (or is found), before anything else is written to it."""
    run_id, artifact_uri = known.get(record.key, (None, None))
    if run_id is None and look_up:
        found = tracker.find_run(record.key)
        if found is not None:
            run_id, artifact_uri = found.info.run_id, found.info.artifact_uri
    if run_id is None:
        if record.name is None:
            raise ValueError(f"run {record.key}: a record of a run never created")
        # A run pruned before its first piece went out is created and renamed in one record:
        # MLflow refuses a run name that differs from an `mlflow.runName` tag, so the later
        # name (the tag) is the one it is created with.
        name = record.tags.get(RUN_NAME_TAG, record.name)
        run = tracker.start_run(name, record.tags, record.parent_id, key=record.key)
        run_id, artifact_uri = run.run_id, run.artifact_uri
        tags_written = True
    else:
        tags_written = False
    if record.key not in known and on_create is not None:
        on_create(run_id)
    known[record.key] = (run_id, artifact_uri)
    run = Run(tracker, run_id, artifact_uri)
    if record.json_files or record.files:
        run.log_files(json_files=record.json_files, raw_files=record.files)
    if record.inputs:
        run.log_inputs(record.inputs)
    run.add_params(record.params)
    run.add_metrics([Metric(k, v, ms, step) for k, v, ms, step in record.metrics])
    run.closing(tags={} if tags_written else record.tags)
    if record.status is not None:
        run.finish(record.status)
    else:
        run.write_pending()
    return run_id
