"""The claim protocol: how any process takes trials of a study and gives them back.

Every loop that trains trials (one at a time, a population at a time, in the main process, in
`--workers` processes, under any launcher) goes through these functions, so all of them get
the same guarantees:
- claim under the study's lock (`claim_trials`): dead workers' trials are failed and queued
  again first (recovery.py), then trials are counted and asked for, so however many processes
  interleave, the study ends at exactly the requested total;
- a heartbeat while they run (RDB storage), so another machine can tell when this one died;
- a watcher while they run, which looks for other workers' dead trials (and the parent runs
  of dead sweeps) every half heartbeat, or every WATCH_SECONDS on a journal, so a killed
  worker's trial is failed and queued again while the survivors train, not when their own
  trials end;
- tell how each ended (`tell` an `Outcome`, after its MLflow records are written: by the
  writer process, writer.py; or `fail_trial`), never masking the exception that ended it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from studylib.config import Experiment, Settings
from studylib.console import say
from studylib.locks import exclusive
from studylib.names import (
    DIVERGED_ATTR,
    FAILURE_ATTR,
    OWNER_ATTR,
    REASON_ATTR,
    RUN_ID_ATTR,
)
from studylib.redact import redact
from studylib.sweep.recovery import WRITER_KEY, Worker, recover
from studylib.sweep.study import count_done, sampler_for, trial_id
from studylib.tracking import Tracker
from studylib.train import TrainResult

WATCH_SECONDS = 2.0  # journal storage: how often a training process looks for dead workers


@dataclass
class Claim:
    trials: list[optuna.Trial]  # claimed by this process: run them
    wait: bool  # none claimed, but trials running elsewhere may die and need a retry here


def heartbeat_seconds(storage: optuna.storages.BaseStorage) -> int | None:
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage.get_heartbeat_interval()
    return None


def claim_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    settings: Settings,
    tracker: Tracker,
    total: int,
    count: int = 1,
    writer: dict[str, Any] | None = None,
) -> Claim:
    """Up to `count` trials for this process, so that the study never exceeds `total`.

    `writer`: the process that writes this process's records (writer.py), named in each
    trial's owner beside this process: a trial is dead only once both are gone."""
    beating = heartbeat_seconds(storage) is not None
    with exclusive(settings.storage, f"study:{study.study_name}"):
        for note in recover(study, storage, tracker, beating):
            say(note)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        done = count_done(trials)
        left = total - done - len(running)
        if done >= total:
            return Claim([], wait=False)
        if left <= 0:
            # The last trials run in other workers; one may yet fail and need a retry. Only
            # wait where their death can be noticed: a heartbeat, or a worker on this machine.
            owners = [Worker.from_attr(t.user_attrs.get(OWNER_ATTR)) for t in running]
            judged = beating or any(o is None or o.on_this_machine() for o in owners)
            return Claim([], wait=judged)
        study.sampler = sampler_for(exp.seed, len(trials))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            claimed = [study.ask() for _ in range(min(count, left))]
        owner = Worker.current().as_attr()
        if writer is not None:
            owner[WRITER_KEY] = writer
        for trial in claimed:
            trial.set_user_attr(OWNER_ATTR, owner)
            if trial.user_attrs.get(RUN_ID_ATTR) is not None:  # inherited from a retried trial
                trial.set_user_attr(RUN_ID_ATTR, None)
        return Claim(claimed, wait=False)


@contextlib.contextmanager
def heartbeat(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    held: Callable[[], list[int]],
) -> Iterator[Callable[[list[int]], None]]:
    """Record a heartbeat every interval (RDB storage only) for each trial `held()` names: the
    trials this process trains, and those it trained whose outcome still waits in its writer's
    queue (a writer stuck on a tracking outage must not let another worker take its trials for
    dead and run them again). Yields `beat_now(numbers)`, which records theirs at once: a
    trial's first heartbeat goes with its claim, since Optuna counts a trial that never beat as
    alive however long ago its worker died.

    Optuna runs this thread inside `study.optimize`; trials here are claimed with ask/tell (to
    count and ask under one lock), so the protocol runs it itself: one thread for all trials.
    """
    interval = heartbeat_seconds(storage)
    if not interval:
        yield lambda numbers: None
        return
    assert isinstance(storage, optuna.storages.RDBStorage)
    ids: dict[int, int] = {}  # trial number -> storage id, looked up once

    def beat_now(numbers: list[int]) -> None:
        for number in numbers:
            try:
                if number not in ids:
                    ids[number] = trial_id(storage, study, number)
                storage.record_heartbeat(ids[number])
            except Exception as exc:  # a database hiccup: the next beat may pass
                say(f"trial {number}: heartbeat not recorded: {exc}")

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            beat_now(held())

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield beat_now
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def watch(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    tracker: Tracker,
) -> Iterator[None]:
    """While this process trains: look for dead workers' trials every half heartbeat (RDB:
    a killed worker's trial is failed within GRACE_HEARTBEATS + 1/2 intervals of its death and
    queued for whichever worker is free) or every WATCH_SECONDS (journal: exact, by process)."""
    interval = heartbeat_seconds(storage)
    every = interval / 2 if interval else WATCH_SECONDS
    stop = threading.Event()

    def look() -> None:
        while not stop.wait(every):
            try:
                with exclusive(settings.storage, f"study:{study.study_name}"):
                    notes = recover(study, storage, tracker, interval is not None)
            except Exception as exc:  # a database hiccup: the next look may pass
                say(f"looking for dead workers' trials failed ({type(exc).__name__}: {exc})")
                continue
            for note in notes:
                say(note)

    thread = threading.Thread(target=look, name="watcher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class Outcome:
    """How a claimed trial ended, as data: told by whoever writes the trial's records (the
    writer process, after its MLflow run is closed), or at once by `tell`."""

    number: int
    state: str  # "complete", "pruned" or "fail"
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def trained_outcome(number: int, result: TrainResult) -> Outcome:
    """A trained trial's outcome: its value and kept results, or FAIL if it diverged (a counted
    FAIL: a result, never retried)."""
    if result.status == "diverged":
        return Outcome(
            number, "fail", attrs={DIVERGED_ATTR: result.reason, FAILURE_ATTR: "diverged"}
        )
    attrs = {key: result.final[key] for key in RESULT_KEYS}
    return Outcome(number, "complete", result.final["selected_val_loss"], attrs)


def failed_outcome(number: int, failure: str, reason: str) -> Outcome:
    """A trial an exception ended: FAIL with why (killed, interrupted, tracking, crashed)."""
    return Outcome(number, "fail", attrs={FAILURE_ATTR: failure, REASON_ATTR: redact(reason)[:500]})


RESULT_KEYS = ("best_epoch", "stopped_epoch", "test_acc", "selected_val_acc")


def tell(study: optuna.Study, storage: optuna.storages.BaseStorage, outcome: Outcome) -> None:
    """Tell Optuna how a trial ended: its attributes, then its state. A trial another worker
    failed meanwhile (no heartbeat for the grace period) is left as it is."""
    try:
        number = trial_id(storage, study, outcome.number)
        for key, value in outcome.attrs.items():
            storage.set_trial_user_attr(number, key, value)
        if outcome.state == "complete":
            study.tell(outcome.number, outcome.value)
        else:
            state = TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL
            study.tell(outcome.number, state=state)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        if not failed_meanwhile(study, outcome.number):
            raise


def fail_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    number: int,
    failure: str,
    reason: str,
) -> None:
    """Mark trial `number` FAIL with why (killed, interrupted, tracking, crashed); never mask
    the exception that brought us here. Retryable failures run again (recovery.queue_retries)."""
    try:
        tell(study, storage, failed_outcome(number, failure, reason))
    except Exception as exc:
        say(f"trial {number} could not be marked FAIL ({exc}); the next sweep will")


def failed_meanwhile(study: optuna.Study, number: int) -> bool:
    """Whether another worker failed the trial while it trained (its heartbeats went unrecorded
    for the grace period: a database outage). Its retry is queued; this result stays in MLflow
    only, and the sweep goes on."""
    if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
        return False
    say(
        f"trial {number} was failed by another worker while it trained (no heartbeat "
        "recorded for the grace period); its retry runs it again"
    )
    return True
