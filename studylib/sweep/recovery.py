"""Recovery: trials of dead workers are failed and run again; a resumed study stays one study.

Stale trials. A worker killed mid-trial (`kill -9`, a crash of the machine) leaves its Optuna
trial RUNNING and its MLflow run RUNNING. Optuna notices only through a heartbeat, and in
Optuna 5.0 only `RDBStorage` has one: `JournalStorage` does not implement `BaseHeartbeat`
(optuna/optuna#6615 asked for it; the pull request was closed unmerged). So every trial records
its worker as a user attribute (host name, boot id, process id, process start time), and before
each claim a worker fails the RUNNING trials whose worker is gone *on this machine*: the
process no longer exists, or its id now belongs to a younger process, or the machine has been
rebooted since. That needs no clock and no interval, and it is exact on one machine, where the
journal file belongs. Trials of other machines are judged by the RDB heartbeat
(`make_storage` turns it on for database URLs). A RUNNING trial that names no worker (it can
only come from an older studylib, or a worker killed in the instant between creating the trial
and naming itself) is failed once it is older than UNOWNED_GRACE_SECONDS.

Retries. A trial failed for a reason that is not its own (its worker died, the user interrupted
it, the tracking server went away) is queued again as a WAITING trial with the same parameters,
at most MAX_RETRIES times, with Optuna's system attributes `failed_trial` and `retry_history`
(the convention of `optuna.storages.RetryHeartbeatStaleTrialCallback`, which queues the RDB
heartbeat's stale trials). A diverged trial is a result, never retried.

All of this runs under the study's lock (`studylib.locks`), so exactly one worker acts on each
dead trial.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from studylib.names import (
    BASELINE_ATTR,
    FAILURE_ATTR,
    OWNER_ATTR,
    REASON_ATTR,
    REASON_TAG,
    RUN_ID_ATTR,
    STATUS_TAG,
)
from studylib.sweep.owners import JobOwner
from studylib.sweep.storage import MAX_RETRIES
from studylib.sweep.study import trial_id
from studylib.tracking import Tracker

RETRYABLE = ("killed", "interrupted", "tracking", "refused")
UNOWNED_GRACE_SECONDS = 60.0


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_started(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), "" if unknown, None if none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        # No /proc (macOS): existence is all we can tell.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Worker:
    host: str
    boot: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Worker:
        """This process (looked up per process id: a forked worker is a worker of its own)."""
        return _worker(os.getpid())

    @classmethod
    def from_attr(cls, value: Any) -> Worker | None:
        try:
            return cls(str(value["host"]), str(value["boot"]), int(value["pid"]), value["started"])
        except (TypeError, KeyError, ValueError):
            return None

    def as_attr(self) -> dict[str, Any]:
        return asdict(self)

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname()

    def is_gone(self) -> bool:
        """On this machine: has this worker's process ended?"""
        if self.boot and _boot_id() and self.boot != _boot_id():
            return True  # the machine was rebooted since
        started = _process_started(self.pid)
        if started is None:
            return True
        return bool(self.started and started and started != self.started)  # pid reused

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@cache
def _worker(pid: int) -> Worker:
    return Worker(socket.gethostname(), _boot_id(), pid, _process_started(pid) or "")


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker, heartbeat: bool
) -> list[str]:
    """Fail the RUNNING trials whose worker is gone; close their MLflow runs as KILLED."""
    notes = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if heartbeat and running:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Fails trials without a heartbeat for the grace period; the storage's
            # RetryHeartbeatStaleTrialCallback queues them again.
            optuna.storages.fail_stale_trials(study)
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for trial in running:
            if states[trial.number] == TrialState.FAIL:
                owner = Worker.from_attr(trial.user_attrs.get(OWNER_ATTR))
                who = owner.describe() if owner else "an unknown worker"
                reason = f"no heartbeat from {who} within the grace period"
                notes.append(_close_killed(trial, tracker, reason))
        running = [t for t in running if states[t.number] == TrialState.RUNNING]

    now = datetime.now()
    for trial in running:
        owner = Worker.from_attr(trial.user_attrs.get(OWNER_ATTR))
        if owner is None:
            started = trial.datetime_start or now
            if (now - started).total_seconds() < UNOWNED_GRACE_SECONDS:
                continue
            reason = f"running for over {UNOWNED_GRACE_SECONDS:.0f} s without a known worker"
        elif owner.on_this_machine() and owner.is_gone():
            reason = f"its worker ({owner.describe()}) is gone"
        else:
            continue  # alive, or on another machine: the heartbeat's business
        try:
            number = trial_id(storage, study, trial.number)
            storage.set_trial_user_attr(number, FAILURE_ATTR, "killed")
            storage.set_trial_user_attr(number, REASON_ATTR, reason)
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            continue  # it finished in the meantime after all
        notes.append(_close_killed(trial, tracker, reason))
    return notes


def _close_killed(trial: FrozenTrial, tracker: Tracker, reason: str) -> str:
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    closed = run_id is not None and tracker.close_run(
        run_id, "KILLED", {STATUS_TAG: "killed", REASON_TAG: reason}
    )
    run = f"its MLflow run {run_id} KILLED" if closed else "it had no open MLflow run"
    return f"trial {trial.number}: {reason}; marked FAIL, {run}"


def queue_retries(study: optuna.Study) -> list[str]:
    """Queue again, with the same parameters, the trials that failed through no fault of theirs."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    notes = []
    for trial in trials:
        if (
            trial.state != TrialState.FAIL
            or trial.user_attrs.get(FAILURE_ATTR) not in RETRYABLE
            or trial.number in retried
        ):
            continue
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > MAX_RETRIES:
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={k: v for k, v in trial.user_attrs.items() if k == BASELINE_ATTR},
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )
        notes.append(
            f"trial {trial.number} ({trial.user_attrs[FAILURE_ATTR]}) queued again with the "
            "same parameters"
        )
    return notes


# ---------------------------------------------------------------------------------------------
# MLflow records of finished trials


def close_dead_sweeps(tracker: Tracker) -> list[str]:
    """Parent runs of sweeps whose worker died on this machine, or whose Slurm or Ray job the
    engine says has ended (owners.py): closed as KILLED. A job the engine cannot be asked
    about is left alone."""
    notes = []
    for run in tracker.open_runs("sweep"):
        attr = _json(run.data.tags.get(OWNER_ATTR))
        job = JobOwner.from_attr(attr)
        if job is not None:
            if job.state() == "gone":
                reason = f"its {job.describe()} has ended"
                if tracker.close_run(run.info.run_id, "KILLED", {REASON_TAG: reason}):
                    notes.append(f"sweep run {run.info.run_name}: {reason}; closed as KILLED")
            continue
        owner = Worker.from_attr(attr)
        if owner is not None and owner.on_this_machine() and owner.is_gone():
            reason = f"its worker ({owner.describe()}) is gone"
            if tracker.close_run(run.info.run_id, "KILLED", {REASON_TAG: reason}):
                notes.append(f"sweep run {run.info.run_name}: {reason}; closed as KILLED")
    return notes


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def audit_records(study: optuna.Study, tracker: Tracker) -> list[str]:
    """Finished trials whose MLflow run is missing or was left open; open ones are closed."""
    runs = tracker.run_states("trial")
    lacking = []
    for trial in study.get_trials(deepcopy=False):
        if not trial.state.is_finished():
            continue
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            lacking.append(f"{trial.number} (no run)")
        elif run_id not in runs:
            lacking.append(f"{trial.number} (run {run_id} not found)")
        elif runs[run_id] == "RUNNING":
            failure = trial.user_attrs.get(FAILURE_ATTR, "")
            reason = trial.user_attrs.get(REASON_ATTR) or (
                "the tracking server was unreachable; its curve may be incomplete"
                if failure == "tracking"
                else f"left open when the trial ended {trial.state.name}"
            )
            status = "KILLED" if failure in ("killed", "interrupted") else "FAILED"
            tracker.close_run(
                run_id, status, {STATUS_TAG: failure or "crashed", REASON_TAG: reason}
            )
            lacking.append(f"{trial.number} (run {run_id} left open, closed as {status})")
    return lacking
