"""The MLflow door: our own small integration (not Optuna's deprecated MLflowCallback).

One MLflow experiment per study; one parent run per sweep invocation; one child run per trial
(tag `mlflow.parentRunId`), tagged with the Optuna study name and trial number. Writes go
through `MlflowClient.log_batch`: per-epoch metrics are buffered and flushed every few seconds
and at the end of a run, never one call per value.

Every MLflow call goes through `Tracker.call`, which retries transient failures (SQLite's
"database is locked", a tracking server that is restarting or unreachable) with exponential
backoff for at most `retry_seconds`, then raises `TrackingUnavailable` with one clear line.
After that the tracker stays down: later calls fail at once instead of waiting again, so the
sweep can close its Optuna trial and stop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import random
import re
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import optuna
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout
from sqlalchemy import event
from sqlalchemy.engine import Engine

from studylib.config import Experiment, Settings
from studylib.locks import exclusive
from studylib.names import (
    BEST_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GROUP_TAG,
    NOTE_TAG,
    PARENT_RUN_TAG,
    ROLE_TAG,
    RUN_KEY_TAG,
)
from studylib.redact import redact

FLUSH_SECONDS = 5.0  # a crash loses at most this much of a run's curve
MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch request
MAX_PARAMS_PER_BATCH = 100

RETRY_SECONDS = 60.0  # how long one MLflow call is retried before the tracker gives up
FIRST_DELAY, MAX_DELAY = 0.25, 8.0
T = TypeVar("T")


class TrackingUnavailable(RuntimeError):
    """MLflow could not be reached (or stayed locked) for the whole retry budget."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a locked SQLite database, an unreachable or overloaded server."""
    if isinstance(exc, RequestsConnectionError | RequestsTimeout | ConnectionError):
        return True
    text = str(exc)
    if "database is locked" in text:
        return True
    if isinstance(exc, MlflowException):
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        # Raised by MLflow's REST client itself: the request never got a proper answer
        # (refused, reset, timed out), or a bare 5xx / 429 came back from a proxy.
        if text.startswith("API request to"):
            status = re.search(r"failed with error code (\d+)", text)
            return status is None or int(status.group(1)) in (429, 500, 502, 503, 504)
    return False


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

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        artifact_root: Path | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ):
        if is_local_database(tracking_uri):
            use_fast_sqlite()
        self.tracking_uri = tracking_uri
        self.retry_seconds = retry_seconds
        self.retries = 0  # transient failures survived, for the record
        self.down: TrackingUnavailable | None = None
        self.experiment_tags: dict[str, str] = {}  # as found when the tracker opened
        if tracking_uri.startswith(("http://", "https://")):
            # Our own bounded retry replaces MLflow's (7 tries with backoff: about 4 minutes
            # per call). Only a default: a value the user set is kept.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            # MLflow prints "View run at <tracking URI>/..." to stdout for every run it closes:
            # noise beside the progress bar, and it would print a password in the URI.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            if redact(tracking_uri) != tracking_uri:
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # MLflow creates its tables in a fresh database without a lock of its own, and
        # several workers doing so at once corrupt it: serialize the first open.
        lock = (
            exclusive(tracking_uri, "mlflow-init")
            if tracking_uri.startswith(("sqlite:///", "postgresql"))
            else contextlib.nullcontext()
        )
        with lock:
            self.client = self.call(lambda: MlflowClient(tracking_uri), "open the tracking store")
        self.experiment_id = self._experiment(experiment_name, artifact_root)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """`fn()`, retried with backoff on transient failures for at most `retry_seconds`."""
        if self.down is not None:
            raise self.down
        started = time.monotonic()
        delay, tries = FIRST_DELAY, 0
        while True:
            tries += 1
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                elapsed = time.monotonic() - started
                if elapsed + delay > self.retry_seconds:
                    cause = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    self.down = TrackingUnavailable(
                        f"MLflow tracking at {redact(self.tracking_uri)} unavailable: could not "
                        f"{what} in {tries} tries over {elapsed:.0f} s ({cause[:300]})"
                    )
                    raise self.down from None
                self.retries += 1
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_DELAY)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.call(lambda: self.client.get_experiment_by_name(name), "find the experiment")
        if found is not None:
            self.experiment_tags = dict(found.tags)
            return found.experiment_id
        location = None
        if artifact_root is not None and is_local_database(self.tracking_uri):
            location = (Path(artifact_root).resolve() / name).as_uri()
        try:
            return self.call(
                lambda: self.client.create_experiment(name, artifact_location=location),
                "create the experiment",
            )
        except MlflowException:
            # Another worker created it between our look-up and our create.
            found = self.call(lambda: self.client.get_experiment_by_name(name), "find it")
            if found is None:
                raise
            return found.experiment_id

    def start_run(
        self,
        run_name: str,
        tags: dict[str, str],
        parent_id: str | None = None,
        key: str | None = None,
    ) -> Run:
        """Create a run; `key` (its RUN_KEY_TAG, made here if not given) finds it again."""
        tags = {**tags, RUN_KEY_TAG: key or uuid.uuid4().hex}
        if parent_id is not None:
            tags[PARENT_RUN_TAG] = parent_id
        tried = False

        def create():
            nonlocal tried
            if tried:  # the failed try may have reached the server: never create a duplicate
                found = self.client.search_runs(
                    [self.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{tags[RUN_KEY_TAG]}'"
                )
                if found:
                    return found[0]
            tried = True
            return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)

        run = self.call(create, f"create run {run_name}")
        return Run(self, run.info.run_id, run.info.artifact_uri, name=run_name)

    def find_run(self, key: str) -> Any | None:
        """The run of this experiment with the given RUN_KEY_TAG, if one was created."""
        found = self.call(
            lambda: self.client.search_runs(
                [self.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'"
            ),
            "look a run up",
        )
        return found[0] if found else None

    def set_experiment_tag(self, key: str, value: str) -> None:
        self.call(
            lambda: self.client.set_experiment_tag(self.experiment_id, key, value),
            "tag the experiment",
        )

    def mark_best(self, run_id: str) -> None:
        """Tag `run_id` as the study's best trial (`studylib.best`), taking the tag off any run
        that held it: the MLflow UI's filter `tags.studylib.best = 'true'` finds one run."""
        for run in self.search_runs(f"tags.`{BEST_TAG}` = 'true'"):
            if run.info.run_id != run_id:
                self.call(
                    lambda r=run: self.client.delete_tag(r.info.run_id, BEST_TAG), "untag a run"
                )
        self.call(lambda: self.client.set_tag(run_id, BEST_TAG, "true"), "tag the best run")

    def system_metrics(self, run_id: str) -> contextlib.AbstractContextManager:
        """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) sampled
        every 10 s into `run_id` while the block runs: a sweep's parent run, where a
        population's or a worker's resources are spent. Without psutil, nothing."""
        try:
            import psutil  # noqa: F401  optional: MLflow's monitor needs it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return contextlib.nullcontext()
        # Its "Started monitoring" lines would land beside the sweep's progress bar.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, tracking_uri=self.tracking_uri)

        @contextlib.contextmanager
        def running():
            monitor.start()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # never fail a sweep over its gauges
                    monitor.finish()

        return running()

    def search_runs(self, filter_string: str) -> list[Any]:
        """Every run of this experiment matching `filter_string`, all pages."""
        found: list[Any] = []
        token = None
        while True:
            page = self.call(
                lambda token=token: self.client.search_runs(
                    [self.experiment_id], filter_string, max_results=1000, page_token=token
                ),
                "list the runs",
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def run_states(self, role: str = "trial") -> dict[str, str]:
        """run id -> MLflow status of every run of this experiment with the given role."""
        runs = self.search_runs(f"tags.`{ROLE_TAG}` = '{role}'")
        return {run.info.run_id: run.info.status for run in runs}

    def load_state_dict(self, run_id: str, name: str = "model.pt") -> dict[str, torch.Tensor]:
        """The weights a run logged. `weights_only=True`: a checkpoint is data, and one that
        would unpickle arbitrary objects (run code) is refused."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.call(
                lambda: self.client.download_artifacts(run_id, name, tmp), f"download {name}"
            )
            return torch.load(path, map_location="cpu", weights_only=True)

    def open_runs(self, role: str) -> list[Any]:
        """Runs of this experiment with the given role that MLflow still holds as RUNNING."""
        return self.search_runs(f"tags.`{ROLE_TAG}` = '{role}' and attributes.status = 'RUNNING'")

    def close_run(self, run_id: str, status: str, tags: dict[str, str]) -> bool:
        """End a run another process left RUNNING; False if it was already closed or is gone."""
        try:
            run = self.call(lambda: self.client.get_run(run_id), "read a run")
        except MlflowException:
            return False
        if run.info.status != "RUNNING":
            return False
        Run(self, run_id).set_tags(tags)
        self.call(lambda: self.client.set_terminated(run_id, status=status), "close a run")
        return True


def open_tracker(exp: Experiment, settings: Settings) -> Tracker:
    """The study's MLflow experiment; a group member's experiment is tagged with its group.
    An experiment without them gets the tag that makes MLflow's UI open it on its runs (not
    its GenAI traces) and a description; one the user edited in the UI is left as it is."""
    tracker = Tracker(
        settings.tracking_uri, exp.name, settings.artifact_root, settings.tracking_retry_seconds
    )
    tags = experiment_tags(exp)
    if exp.group:
        tags[GROUP_TAG] = exp.group
    for key, value in tags.items():
        if key == GROUP_TAG or key not in tracker.experiment_tags:
            tracker.set_experiment_tag(key, value)
    return tracker


def experiment_tags(exp: Experiment) -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: experiment_description(exp)}


def experiment_description(exp: Experiment) -> str:
    """The experiment's description in the MLflow UI (Markdown)."""
    return (
        f"**Regularization study `{exp.name}`**: {exp.model.arch} on {exp.data.name}. What do "
        "dropout, L1, L2 / weight decay and early stopping do to overfitting?\n\n"
        "- Runs named `sweep-*` are Optuna sweeps; their children are trials, named by the "
        "regularizers they used (`trial 27: dropout 0.10, l2 7.9e-3`). Trial 0 is the "
        "unregularized baseline (tag `studylib.baseline = true`); the current best trial has "
        "`studylib.best = true`; pruned trials carry `[pruned]` in their name.\n"
        "- Runs named `ablation-*` hold the ablation: one child per arm and seed "
        "(`dropout-seed1`), paired by seed against the baseline arm.\n"
        "- Params `optuna.*` are what Optuna sampled (a strength is sampled even when its "
        "switch `*_on` is off); `effective.*` are what training used.\n\n"
        f"The report (`make report`, then open `reports/{exp.name}/index.html`) says what "
        "regularization did, with verdicts; a copy is attached to the newest sweep run under "
        "`report/`."
    )


class Run:
    """One MLflow run, written in batches."""

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        artifact_uri: str | None = None,
        name: str | None = None,
    ):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.name = name
        self.artifact_uri = artifact_uri
        self._pending: list[Metric] = []
        self._pending_params: list[Param] = []
        self._closing_tags: dict[str, Any] = {}
        self._last_flush = time.monotonic()

    def _batch(self, what: str, **items) -> None:
        self.tracker.call(lambda: self.client.log_batch(self.run_id, **items), what)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._batch("log params", params=items[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)[:5000]) for key, value in tags.items()]
        if items:
            self._batch("set tags", tags=items)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """Queue one epoch's metrics; written with others once FLUSH_SECONDS have passed."""
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, value, now, step) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def add_metrics(self, metrics: list[Metric]) -> None:
        """Queue metrics made elsewhere (with their own timestamps) for the next batch."""
        self._pending.extend(metrics)

    def add_params(self, params: dict[str, Any]) -> None:
        """Queue params for the next `write_pending` or `finish` batch."""
        self._pending_params.extend(Param(key, str(value)) for key, value in params.items())

    def log_inputs(self, datasets: list[Any]) -> None:
        """Dataset inputs (`mlflow.entities.DatasetInput`), in one call.

        MLflow's SQL store looks a data set up, then inserts it: two processes logging the same
        data set at once (workers' writers) can both miss it, and the second insert breaks the
        unique key. The data set then exists, so the call is made once more, which finds it."""

        def log() -> None:
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
            except MlflowException as exc:
                text = str(exc).lower()
                if "datasets" not in text or not ("unique" in text or "duplicate key" in text):
                    raise
                self.client.log_inputs(self.run_id, datasets=datasets)

        self.tracker.call(log, "log inputs")

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        self.flush()

    def flush(self) -> None:
        pending = self._pending
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self._batch("log metrics", metrics=pending[start : start + MAX_METRICS_PER_BATCH])
        # Dropped only once written: a batch that failed is retried by the next flush.
        self._pending = []
        self._last_flush = time.monotonic()

    def log_json(self, name: str, payload: Any) -> None:
        self.log_files(json_files={name: payload})

    def log_state_dict(self, state_dict: dict[str, torch.Tensor], name: str = "model.pt") -> None:
        self.log_files(state_dicts={name: state_dict})

    def log_files(
        self,
        json_files: dict[str, Any] | None = None,
        state_dicts: dict[str, dict[str, torch.Tensor]] | None = None,
        raw_files: dict[str, bytes] | None = None,
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
            for name, data in (raw_files or {}).items():  # already serialized elsewhere
                (folder / name).write_bytes(data)
            if local is None:
                self.tracker.call(
                    lambda: self.client.log_artifacts(self.run_id, tmp), "upload artifacts"
                )

    def _local_artifact_dir(self) -> Path | None:
        if self.artifact_uri is None or not self.artifact_uri.startswith("file:"):
            return None
        return Path(url2pathname(urlparse(self.artifact_uri).path))

    def closing(
        self, tags: dict[str, Any] | None = None, metrics: dict[str, float] | None = None
    ) -> None:
        """Queue tags and final metrics (step 0) for the one batch `finish` writes."""
        if metrics:
            now = int(time.time() * 1000)
            self._pending.extend(Metric(k, float(v), now, 0) for k, v in metrics.items())
        self._closing_tags.update(tags or {})

    def write_pending(self) -> None:
        """Queued params, closing tags and metrics, in as few `log_batch` calls as MLflow's
        limits allow (100 params, 100 tags, 1000 values in all a call); the tags ride with the
        first. Dropped only once written: a batch that failed is retried by the next call."""
        params, metrics = self._pending_params, self._pending
        tags = [RunTag(key, str(value)[:5000]) for key, value in self._closing_tags.items()]
        while params or tags or metrics:
            some_params, some_tags = params[:MAX_PARAMS_PER_BATCH], tags[:MAX_PARAMS_PER_BATCH]
            room = MAX_METRICS_PER_BATCH - len(some_params) - len(some_tags)
            some_metrics = metrics[:room]
            self._batch("close the run", metrics=some_metrics, params=some_params, tags=some_tags)
            params, tags = params[len(some_params) :], tags[len(some_tags) :]
            metrics = metrics[len(some_metrics) :]
            self._pending_params, self._pending = params, metrics
            self._closing_tags = dict(list(self._closing_tags.items())[len(some_tags) :])
        self._last_flush = time.monotonic()

    def finish(
        self,
        status: str,
        tags: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Close the run with an MLflow status (FINISHED, FAILED or KILLED).

        The queued epochs, `metrics` (at step 0) and `tags` (with those given to `closing`)
        go out together in one `log_batch`: a trial's closing writes cost one database
        transaction, not three. Each write goes through the tracker's retries.
        """
        self.closing(tags, metrics)
        self.write_pending()
        self.tracker.call(
            lambda: self.client.set_terminated(self.run_id, status=status), "close the run"
        )
