"""The writer: a process that owns a training process's MLflow writes and Optuna tells.

Every training process of a sweep (the main one, each `--workers` process, a launcher's
worker) hands its trials' records to a writer of its own and trains on: trial N+1 (or the next
population) trains while trial N's MLflow run is written and its outcome told. What stays on
the training path is building the records (plain data: tracking/records.py) and putting them
on a bounded queue.

- A process, not a thread: MLflow's writes are Python (SQLAlchemy, or HTTP), and a thread
  would hold the GIL against the training loop's own Python. `Settings.writer = "thread"`
  runs the same code in a thread (what a test that patches MLflow in this process needs);
  "off" writes at once on the training path, as before.
- Durability: a trial is told to Optuna only after its MLflow records are written, by the
  writer, in order. `kill -9` of the trainer: the writer writes what it was handed, then
  exits (it watches the trainer's process); the trial in training is failed and queued again
  by recovery once both processes are gone (its owner names both: claim.claim_trials). `kill
  -9` of the writer: the trainer notices, starts another and hands it again every message not
  yet acknowledged; applying a record twice is harmless (records.apply). Both: the trials not
  yet told are RUNNING with a dead owner, failed and run again by the next sweep; their
  half-written runs are closed by recovery.
- Backpressure: at most QUEUE_MESSAGES messages are unacknowledged; then the trainer waits
  (a slow or unreachable tracking server stalls training). The tracker's bounded retry runs in
  the writer; when it gives up, the trainer raises the same `TrackingUnavailable` at its next
  hand-over, and the sweep fails its unwritten trials and exits 3 as it did.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from studylib.config import Experiment, Settings
from studylib.console import say
from studylib.names import RUN_ID_ATTR
from studylib.sweep.claim import Outcome, tell
from studylib.sweep.recovery import Worker
from studylib.sweep.storage import make_storage
from studylib.sweep.study import pruner_for, sampler_for, trial_id
from studylib.tracking import RunRecord, Tracker, TrackingUnavailable, apply

QUEUE_MESSAGES = 16  # unacknowledged messages before the trainer waits (backpressure)
POLL_SECONDS = 0.2  # how often a waiting trainer looks at its writer, and a writer at its trainer
MERGE_MESSAGES = 64  # messages a writer that is behind writes in one go
MAX_RESTARTS = 3  # writers started again after dying, per training process
STOP_SECONDS = 30.0  # how long a writer may take to exit once told to


class WriterFailed(RuntimeError):
    """The writer died more than MAX_RESTARTS times, or failed on something not the tracker's."""


@dataclass
class Piece:
    """A record of one run; `trial`: the Optuna trial to link to the run once it exists."""

    record: RunRecord
    trial: int | None = None


@dataclass
class Message:
    """What a writer applies in order: runs' records, then trials' outcomes."""

    pieces: list[Piece] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class Spec:
    """What a writer opens: the study (as every process of the sweep does) and its tracker."""

    exp: Experiment
    settings: Settings
    trainer: dict[str, Any]  # the training process (recovery.Worker): its end ends the writer
    look_up: bool  # started again: runs of unknown keys may already exist
    study_name: str | None = None  # the study told (None: the sweep's, `exp.name`)


def process_context() -> multiprocessing.context.BaseContext:
    """Fresh processes: no threads, locks or database handles inherited from this one.

    A fork server that has imported studylib (torch, MLflow, Optuna) once forks each worker
    ready to run: measured on 2 busy cores, 3 s until two workers run instead of 9.5 s when
    each imports everything itself ("spawn", the fallback where there is no fork server).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first optimizer a process builds imports it (2-4 s here).
    context.set_forkserver_preload(["torch._dynamo", "studylib.sweep.workers"])
    return context


def writer_context() -> multiprocessing.context.BaseContext:
    """Linux: a fork of the trainer, which starts in milliseconds (a fork server or a spawned
    interpreter imports studylib first: seconds, which a short sweep would wait for at its
    end). The fork runs only the writer's loop: no torch work, no CUDA; the database
    connections it inherited are dropped before it opens its own (`forget_connections`)."""
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return process_context()


def forget_connections() -> None:
    """In a forked writer: drop, without closing them, the SQLAlchemy connections inherited
    from the trainer (the trainer keeps using them), as SQLAlchemy prescribes after a fork.
    MLflow keeps its engines in a class-level map; its store objects are cached per URI."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: PLC0415  # start-up: only in the writer

    for engine in list(getattr(SqlAlchemyStore, "_engine_map", {}).values()):
        engine.dispose(close=False)


def serve(spec: Spec, requests: Any, replies: Any, in_process: bool) -> None:
    """The writer's loop: apply each message in order, acknowledge it; stop on None, on the
    tracker giving up (after saying so), or once the trainer is gone and nothing is left."""
    if not in_process:
        # Ctrl-C reaches the whole process group: the trainer closes its trial through this
        # writer and then stops it, so the writer itself ignores the signals.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        forget_connections()
    trainer = Worker.from_attr(spec.trainer)
    try:
        exp, settings = spec.exp, spec.settings
        storage = make_storage(settings.storage, settings.heartbeat_seconds)
        study = optuna.load_study(
            study_name=spec.study_name or exp.name,
            storage=storage,
            sampler=sampler_for(exp.seed, 0),
            pruner=pruner_for(exp),
        )
        tracker = Tracker(
            settings.tracking_uri,
            exp.name,
            settings.artifact_root,
            settings.tracking_retry_seconds,
        )
    except BaseException as exc:
        replies.put(("error", 0, _kind(exc), _text(exc)))
        return
    known: dict[str, tuple[str, str | None]] = {}
    busy = threading.Event()  # set while a message is being written
    if not in_process and trainer is not None:
        watch_trainer(trainer, busy)
    while True:
        try:
            item = requests.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not in_process and trainer is not None and trainer.is_gone():
                return  # everything handed over is written
            continue
        if item is None:
            return
        # What else is waiting goes with it: a writer behind its trainer (short trials) writes
        # a run's creation and its closing in one go (merge: fewer store round trips).
        items, stop = [item], False
        while len(items) < MERGE_MESSAGES:
            try:
                more = requests.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stop = True
                break
            items.append(more)
        started = time.thread_time()  # this thread's: a writer thread's trainer apart
        busy.set()
        try:
            write(
                merge([message for _, message in items]),
                study,
                storage,
                tracker,
                known,
                spec.look_up,
            )
        except BaseException as exc:
            replies.put(("error", items[0][0], _kind(exc), _text(exc)))
            return
        busy.clear()
        spent = (time.thread_time() - started) / len(items)
        for number, _ in items:
            replies.put(("done", number, spent))
        if stop:
            return


def watch_trainer(trainer: Worker, busy: threading.Event) -> None:
    """End this writer once its trainer is gone and it has been idle for two looks.

    The loop ends by itself when the queue is empty, except in one case: a trainer killed in
    the middle of putting a message leaves part of it in the pipe, and reading it then waits
    forever (this process holds the pipe's other end too, so it never sees an end of file).
    A writer that stayed alive would keep its dead trainer's trials from being recovered."""

    def look() -> None:
        idle = 0
        while True:
            time.sleep(POLL_SECONDS)
            if not trainer.is_gone():
                continue
            idle = 0 if busy.is_set() else idle + 1
            if idle >= 2:
                os._exit(0)  # what was complete is written; the rest was never acknowledged

    threading.Thread(target=look, name="trainer-watch", daemon=True).start()


def merge(messages: list[Message]) -> Message:
    """Messages as one: each run's pieces as one record (in the order the runs first appear),
    then every outcome in order. Outcomes are still told only after all the records."""
    records: dict[str, Piece] = {}
    for message in messages:
        for piece in message.pieces:
            earlier = records.get(piece.record.key)
            if earlier is not None:
                trial = earlier.trial if earlier.trial is not None else piece.trial
                records[piece.record.key] = Piece(merged(earlier.record, piece.record), trial)
            else:
                records[piece.record.key] = piece
    return Message(list(records.values()), [o for m in messages for o in m.outcomes])


def merged(first: RunRecord, then: RunRecord) -> RunRecord:
    return RunRecord(
        first.key,
        name=first.name or then.name,
        parent_id=first.parent_id or then.parent_id,
        tags={**first.tags, **then.tags},
        params={**first.params, **then.params},
        metrics=[*first.metrics, *then.metrics],
        json_files={**first.json_files, **then.json_files},
        files={**first.files, **then.files},
        inputs=[*first.inputs, *then.inputs],
        status=then.status or first.status,
    )


def write(
    message: Message,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    known: dict[str, tuple[str, str | None]],
    look_up: bool,
) -> None:
    """One message: each run's records (a new run linked to its trial at once, so that a
    trial that dies leaves a trace of its run), then the outcomes, told only now."""
    for piece in message.pieces:
        link = None
        if piece.trial is not None:
            number = trial_id(storage, study, piece.trial)

            def link(run_id: str, number: int = number) -> None:
                storage.set_trial_user_attr(number, RUN_ID_ATTR, run_id)

        apply(tracker, piece.record, known, look_up, link)
    for outcome in message.outcomes:
        tell(study, storage, outcome)


def _kind(exc: BaseException) -> str:
    return "tracking" if isinstance(exc, TrackingUnavailable) else "crashed"


def _text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TrackingUnavailable) else f"{type(exc).__name__}: {exc}"


class Writer:
    """The training side: hand messages over (`submit`), wait until all are written and told
    (`settle`), stop (`close`). Raises the writer's error at the next of these calls."""

    def __init__(
        self,
        exp: Experiment,
        settings: Settings,
        mode: str = "process",
        study_name: str | None = None,
    ):
        self.exp, self.settings, self.mode = exp, settings, mode
        self.study_name = study_name
        self.unacked: dict[int, Message] = {}  # handed over, not yet written and told
        self.count = 0
        self.restarts = 0
        self.seconds = 0.0  # the writer thread's CPU time over the messages it acknowledged
        self.waited = 0.0  # time the trainer spent waiting for it (backpressure, settling)
        self.error: BaseException | None = None
        self._start(look_up=False)

    def _start(self, look_up: bool) -> None:
        spec = Spec(self.exp, self.settings, Worker.current().as_attr(), look_up, self.study_name)
        if self.mode == "thread":
            self.requests: Any = queue.Queue()
            self.replies: Any = queue.Queue()
            self.host: Any = threading.Thread(
                target=serve, args=(spec, self.requests, self.replies, True), daemon=True
            )
            self.host.start()
        else:
            context = writer_context()
            self.requests, self.replies = context.Queue(), context.Queue()
            self.host = context.Process(
                target=serve,
                args=(spec, self.requests, self.replies, False),
                name="studylib-writer",
                daemon=True,
            )
            self.host.start()
        for number, message in self.unacked.items():  # a restart: everything not acknowledged
            self.requests.put((number, message))

    def owner_attr(self) -> dict[str, Any] | None:
        """The writer process as a trial's owner names it (none for a thread)."""
        if self.mode != "process" or self.host.pid is None:
            return None
        return Worker.of(self.host.pid).as_attr()

    def submit(self, message: Message) -> None:
        """Hand a message over; waits while QUEUE_MESSAGES are unacknowledged."""
        self.poll()
        if len(self.unacked) >= QUEUE_MESSAGES:
            self._wait(lambda: len(self.unacked) < QUEUE_MESSAGES)
        self.count += 1
        self.unacked[self.count] = message
        self.requests.put((self.count, message))

    def settle(self) -> None:
        """Wait until every message handed over is written and told."""
        self.poll()
        if self.unacked:
            self._wait(lambda: not self.unacked)

    def settle_outcomes(self) -> None:
        """Wait until every outcome handed over is told (runs' curves may still be written)."""
        self.poll()
        if any(message.outcomes for message in self.unacked.values()):
            self._wait(lambda: not any(m.outcomes for m in self.unacked.values()))

    def untold(self) -> list[int]:
        """Trials whose outcome is handed over and not yet told. Read by the heartbeat thread
        while the training thread changes `unacked`: a read that races a change is read again."""
        for _ in range(3):
            try:
                return [o.number for m in list(self.unacked.values()) for o in m.outcomes]
            except RuntimeError:  # "dictionary changed size during iteration"
                continue
        return []

    def poll(self) -> None:
        """Read what the writer said, without waiting; raise its error, if any."""
        if self.error is not None:
            raise self.error
        while True:
            try:
                reply = self.replies.get_nowait()
            except queue.Empty:
                break
            self._take(reply)
        if self.error is not None:
            raise self.error

    def _wait(self, ready) -> None:
        started = time.perf_counter()
        try:
            while not ready():
                try:
                    reply = self.replies.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not self.host.is_alive():
                        self._restart()
                    continue
                self._take(reply)
                if self.error is not None:
                    raise self.error
        finally:
            self.waited += time.perf_counter() - started

    def _take(self, reply: tuple) -> None:
        if reply[0] == "done":
            self.unacked.pop(reply[1], None)
            self.seconds += reply[2]
        else:
            _, number, kind, text = reply
            self.error = TrackingUnavailable(text) if kind == "tracking" else WriterFailed(text)

    def _restart(self) -> None:
        """The writer died (`kill -9`, the OOM killer): start another; it gets every message
        not acknowledged again."""
        with contextlib.suppress(queue.Empty, OSError, EOFError, ValueError):
            while True:  # what it said before it died
                self._take(self.replies.get_nowait())
        if self.error is not None:
            raise self.error
        how = getattr(self.host, "exitcode", None)
        if self.restarts >= MAX_RESTARTS:
            self.error = WriterFailed(
                f"the writer process died {self.restarts + 1} times (last exit {how}); "
                f"{len(self.unacked)} messages unwritten"
            )
            raise self.error
        self.restarts += 1
        # The dead writer's queue may hold a message half sent: its feeder thread would block
        # on the full pipe and hang this process's exit. Everything in it is sent again.
        if self.mode == "process":
            self.requests.cancel_join_thread()
        say(
            f"the writer process (pid {self.host.pid}) ended (exit {how}); started another, "
            f"which writes the {len(self.unacked)} messages not yet written"
        )
        self._start(look_up=True)

    def close(self) -> None:
        """Wait for everything to be written, then stop the writer."""
        try:
            self.settle()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the writer without waiting for what it has not written (after an error)."""
        with contextlib.suppress(Exception):
            self.requests.put(None)
        self.host.join(STOP_SECONDS)
        if self.mode == "process":
            if self.host.is_alive():
                self.host.terminate()
            self.requests.cancel_join_thread()  # a dead writer reads nothing more
