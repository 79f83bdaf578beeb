"""Tracking: our own small MLflow integration (not Optuna's deprecated MLflowCallback).

One MLflow experiment per study; one parent run per sweep invocation; one child run per trial
(tag `mlflow.parentRunId`), tagged with the Optuna study name and trial number. Writes go
through `MlflowClient.log_batch`: per-epoch metrics are buffered and flushed every few seconds
and at the end of a run, never one call per value.
"""

from __future__ import annotations

import contextlib
import functools
import json
import platform
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import optuna
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from sqlalchemy import event
from sqlalchemy.engine import Engine

FLUSH_SECONDS = 5.0  # a crash loses at most this much of a run's curve
MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch request
MAX_PARAMS_PER_BATCH = 100

PARENT_RUN_TAG = "mlflow.parentRunId"
STUDY_TAG = "optuna.study_name"
TRIAL_TAG = "optuna.trial_number"
ROLE_TAG = "studylib.role"  # "sweep" (parent), "trial" (child) or "train" (single run)
STATUS_TAG = "studylib.status"  # completed, early_stopped, pruned, diverged, crashed, killed
REASON_TAG = "studylib.reason"


def is_local_database(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:")


def _fast_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """WAL journal, synchronous=NORMAL: a commit no longer waits for the disk.

    MLflow commits every call; under the default rollback journal each commit costs several
    fsyncs (15-20 ms measured on a busy disk, 2-5 ms with this). SQLite's guarantee with WAL +
    NORMAL: the database is never corrupted; a power cut (not a crash of the process) may
    lose the last transactions. WAL also lets parallel workers read while one writes.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:  # locked by another process mid-switch: keep defaults
            pass


def use_fast_sqlite() -> None:
    """Apply `_fast_sqlite` to every SQLite connection this process opens from now on."""
    if not event.contains(Engine, "connect", _fast_sqlite):
        event.listen(Engine, "connect", _fast_sqlite)


def environment_tags() -> dict[str, str]:
    commit = git_commit()
    return {
        "studylib.torch": torch.__version__,
        "studylib.mlflow": mlflow.__version__,
        "studylib.optuna": optuna.__version__,
        "studylib.python": platform.python_version(),
        "studylib.git_commit": commit,
        "mlflow.source.git.commit": commit,
    }


@functools.cache
def git_commit() -> str:
    """The commit of the studylib checkout, '+dirty' when it has uncommitted changes.

    Read once per process: two `git` calls per trial would cost more than the trial's MLflow run.
    """
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


class Tracker:
    """The MLflow experiment of one study."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None):
        if is_local_database(tracking_uri):
            use_fast_sqlite()
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = self._experiment(experiment_name, artifact_root)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if artifact_root is not None and is_local_database(self.tracking_uri):
            location = (Path(artifact_root).resolve() / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another worker created it between our look-up and our create.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, run_name: str, tags: dict[str, str], parent_id: str | None = None) -> Run:
        tags = dict(tags)
        if parent_id is not None:
            tags[PARENT_RUN_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return Run(self.client, run.info.run_id, run.info.artifact_uri)


class Run:
    """One MLflow run, written in batches."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str | None = None):
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)[:5000]) for key, value in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """Queue one epoch's metrics; written with others once FLUSH_SECONDS have passed."""
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, value, now, step) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=pending[start : start + MAX_METRICS_PER_BATCH]
            )
        self._last_flush = time.monotonic()

    def log_json(self, name: str, payload: Any) -> None:
        self.log_files(json_files={name: payload})

    def log_state_dict(self, state_dict: dict[str, torch.Tensor], name: str = "model.pt") -> None:
        self.log_files(state_dicts={name: state_dict})

    def log_files(
        self,
        json_files: dict[str, Any] | None = None,
        state_dicts: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """Write JSON payloads and `torch.save`d state dicts as the run's artifacts.

        With a local artifact store the files are written in place (MLflow would copy them
        there after looking the run up again); otherwise they go up in one upload.
        """
        local = self._local_artifact_dir()
        with tempfile.TemporaryDirectory() if local is None else contextlib.nullcontext() as tmp:
            folder = local if local is not None else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for name, payload in (json_files or {}).items():
                (folder / name).write_text(json.dumps(payload, indent=2, sort_keys=True))
            for name, state_dict in (state_dicts or {}).items():
                torch.save(state_dict, folder / name)
            if local is None:
                self.client.log_artifacts(self.run_id, tmp)

    def _local_artifact_dir(self) -> Path | None:
        if self.artifact_uri is None or not self.artifact_uri.startswith("file:"):
            return None
        return Path(url2pathname(urlparse(self.artifact_uri).path))

    def finish(
        self,
        status: str,
        tags: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Close the run with an MLflow status (FINISHED, FAILED or KILLED).

        The queued epochs, `metrics` (at step 0) and `tags` go out together in one `log_batch`:
        a trial's closing writes cost one database transaction, not three.
        """
        if metrics:
            now = int(time.time() * 1000)
            self._pending.extend(Metric(k, float(v), now, 0) for k, v in metrics.items())
        tag_items = [RunTag(key, str(value)[:5000]) for key, value in (tags or {}).items()]
        pending, self._pending = self._pending, []
        batches = [
            pending[start : start + MAX_METRICS_PER_BATCH]
            for start in range(0, len(pending), MAX_METRICS_PER_BATCH)
        ] or [[]]
        for number, batch in enumerate(batches):
            extra = tag_items if number == 0 else []  # the tags ride with the first batch
            if batch or extra:
                self.client.log_batch(self.run_id, metrics=batch, tags=extra)
        self._last_flush = time.monotonic()
        self.client.set_terminated(self.run_id, status=status)
