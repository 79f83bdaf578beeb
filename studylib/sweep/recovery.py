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
dead trial, before each claim and, while trials train, from a watcher thread (claim.watch).

Parent runs. A sweep's parent MLflow run names its owner in a tag (`studylib.worker`). An owner
that is a process (host, boot, pid, start time) is judged like a trial's worker: it is gone when
its process is gone from this machine, or when the heartbeat found it dead (its trials went
silent). Whichever worker finds that closes the parent run as KILLED. Any other owner (a job of
a launcher that outlives its processes, `{"job": ...}`) is alive for as long as its launcher
says: such a parent is never closed here.
"""

from __future__ import annotations

import contextlib
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
from mlflow.exceptions import MlflowException
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from studylib.config import Experiment
from studylib.console import say
from studylib.names import (
    ARCH_TAG,
    BASELINE_ATTR,
    DATASET_TAG,
    DIVERGED_ATTR,
    FAILURE_ATTR,
    OWNER_ATTR,
    REASON_ATTR,
    REASON_TAG,
    RELOGGED_TAG,
    ROLE_TAG,
    RUN_ID_ATTR,
    RUN_SEED_TAG,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from studylib.sweep.owners import JobOwner
from studylib.sweep.storage import MAX_RETRIES
from studylib.sweep.study import trial_id
from studylib.sweep.trial import TrialPlan, trial_plan
from studylib.tracking import (
    Tracker,
    TrackingUnavailable,
    applicable_params,
    effective_params,
    group_tags,
)

# Failures that are not the trial's own: it runs again. "disk_full": a write found no space.
RETRYABLE = ("killed", "interrupted", "tracking", "refused", "disk_full")
# In a trial's owner: the writer process of its worker (writer.py), which tells the trial's
# outcome after its worker trained it. A trial is dead once both processes are gone.
WRITER_KEY = "writer"
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
    def of(cls, pid: int) -> Worker:
        """Process `pid` of this machine (a writer process started by this one)."""
        return _worker(pid)

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


def recover(
    study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker, heartbeat: bool
) -> list[str]:
    """Everything a worker does for the dead, under the study's lock: their trials failed and
    queued again, the parent runs they owned closed. One note per thing done."""
    dead: set[Worker] = set()
    notes = fail_dead_trials(study, storage, tracker, heartbeat, dead)
    if dead:
        notes += close_dead_sweeps(tracker, dead, ask_engines=False)
    return notes + queue_retries(study)


def fail_dead_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    heartbeat: bool,
    dead: set[Worker] | None = None,
) -> list[str]:
    """Fail the RUNNING trials whose worker is gone; close their MLflow runs as KILLED. The
    workers found dead are added to `dead`."""
    dead = set() if dead is None else dead
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
                if owner is not None:
                    dead.add(owner)
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
            writer = _writer_of(trial.user_attrs.get(OWNER_ATTR))
            if writer is not None and not writer.is_gone():
                continue  # its writer may yet tell how it ended
            reason = f"its worker ({owner.describe()}) is gone"
            dead.add(owner)
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


def _writer_of(attr: Any) -> Worker | None:
    return Worker.from_attr(attr.get(WRITER_KEY)) if isinstance(attr, dict) else None


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


def close_dead_sweeps(
    tracker: Tracker,
    dead: set[Worker] | frozenset[Worker] = frozenset(),
    ask_engines: bool = True,
) -> list[str]:
    """Open parent runs of sweeps and ablations whose owner is dead: a process found dead (`dead`, by the
    heartbeat or here) or gone from this machine, or a Slurm or Ray job its engine says has
    ended (owners.py; only with `ask_engines`: asking squeue or Ray takes seconds, too long
    under the study's lock). Closed as KILLED; a job the engine cannot be asked about is left
    alone."""
    notes = []
    for run in [*tracker.open_runs("sweep"), *tracker.open_runs("ablation")]:
        attr = _json(run.data.tags.get(OWNER_ATTR))
        job = JobOwner.from_attr(attr)
        if job is not None:
            if ask_engines and job.state() == "gone":
                reason = f"its {job.describe()} has ended"
                if tracker.close_run(run.info.run_id, "KILLED", {REASON_TAG: reason}):
                    notes.append(
                        f"{_role(run)} run {run.info.run_name}: {reason}; closed as KILLED"
                    )
            continue
        owner = Worker.from_attr(attr)
        if owner is None:
            continue  # no process owns it: a run of an older studylib
        if owner.on_this_machine() and owner.is_gone():
            reason = f"its worker ({owner.describe()}) is gone"
        elif owner in dead:
            reason = f"its worker ({owner.describe()}) stopped sending heartbeats"
        else:
            continue
        if tracker.close_run(run.info.run_id, "KILLED", {REASON_TAG: reason}):
            notes.append(f"{_role(run)} run {run.info.run_name}: {reason}; closed as KILLED")
    return notes


def _role(run: Any) -> str:
    return run.data.tags.get(ROLE_TAG, "sweep")


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def audit_records(study: optuna.Study, tracker: Tracker) -> list[str]:
    """Finished trials whose MLflow run is missing or was left open; open ones are closed. A
    trial with a run of its number (one re-logged from Optuna) is not missing."""
    found = tracker.search_runs(f"tags.`{ROLE_TAG}` = 'trial'")
    runs = {run.info.run_id: run.info.status for run in found}
    numbered = {run.data.tags.get(TRIAL_TAG) for run in found}
    lacking = []
    trials = study.get_trials(deepcopy=False)
    linked = {t.user_attrs.get(RUN_ID_ATTR) for t in trials}
    states = {str(t.number): t.state for t in trials}
    for run in found:
        # A run no trial points at, left open: its writer was killed between creating it and
        # linking it to its trial (writer.py). Once that trial is no longer RUNNING, nothing
        # will close it: close it here.
        number = run.data.tags.get(TRIAL_TAG)
        if (
            run.info.status == "RUNNING"
            and run.info.run_id not in linked
            and number in states
            and states[number] != TrialState.RUNNING
        ):
            reason = f"never linked to trial {number}: its writer died before it could"
            tracker.close_run(run.info.run_id, "KILLED", {STATUS_TAG: "killed", REASON_TAG: reason})
            lacking.append(f"{number} (unlinked run {run.info.run_id} left open, closed as KILLED)")
    for trial in trials:
        if not trial.state.is_finished():
            continue
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if (run_id is None or run_id not in runs) and str(trial.number) in numbered:
            continue  # re-logged: Optuna cannot point a finished trial at its new run
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


def relog_missing(
    study: optuna.Study, tracker: Tracker, exp: Experiment, parent_id: str | None
) -> list[int]:
    """Finished trials without any MLflow run of theirs (never written, or lost with a damaged
    database): each gets a run made from what Optuna holds, under `parent_id`. Returns their
    numbers. What Optuna does not hold (the train curves, weights, most final metrics) stays
    missing, and the run says so (`studylib.relogged_from = optuna`)."""
    numbered = {
        run.data.tags.get(TRIAL_TAG) for run in tracker.search_runs(f"tags.`{ROLE_TAG}` = 'trial'")
    }
    relogged = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and str(trial.number) not in numbered:
            relog_trial(exp, trial, tracker, parent_id)
            relogged.append(trial.number)
    return relogged


def relog_trial(
    exp: Experiment, trial: FrozenTrial, tracker: Tracker, parent_id: str | None
) -> str:
    """One finished trial's run, from Optuna: its config (the parameters it took), its
    validation curve (the values it reported for pruning), its value and the results it kept
    as attributes, its ending and reason. Returns the run id."""
    try:
        plan = trial_plan(exp, trial, trial.system_attrs.get("failed_trial"))
    except ValueError:  # a trial that died before taking all its parameters: the base config
        plan = TrialPlan(
            exp,
            f"trial {trial.number}: parameters not recorded",
            {ROLE_TAG: "trial", STUDY_TAG: exp.name, TRIAL_TAG: str(trial.number)},
        )
    status, run_status, reason = _ending(trial, plan.exp)
    tags = {
        **plan.tags,
        **group_tags(exp),
        ARCH_TAG: exp.model.arch,
        DATASET_TAG: exp.data.name,
        RUN_SEED_TAG: str(exp.seed),
        RELOGGED_TAG: "optuna",
    }
    run = tracker.start_run(plan.run_name, tags=tags, parent_id=parent_id)
    params = {
        **applicable_params(plan.exp),
        **{f"optuna.{k}": v for k, v in trial.params.items()},
        **effective_params(plan.exp),
    }
    run.log_params(params)
    for epoch, value in sorted(trial.intermediate_values.items()):
        run.log_epoch(epoch, {"val/loss": value})
    final: dict[str, float] = {}
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        attrs = trial.user_attrs
        final = {k: attrs[k] for k in RESULT_ATTRS if isinstance(attrs.get(k), int | float)}
        final["selected_val_loss"] = trial.value
        if "best_epoch" in final and "stopped_epoch" in final:
            stops = plan.exp.train.early_stopping
            final["selected_epoch"] = final["best_epoch" if stops else "stopped_epoch"]
        if trial.intermediate_values:
            final["best_val_loss"] = min(trial.intermediate_values.values())
    run.finish(
        run_status,
        tags={STATUS_TAG: status, REASON_TAG: reason},
        metrics={k: float(v) for k, v in final.items()},
    )
    return run.run_id


# The results a completed trial keeps as Optuna attributes (claim.trained_outcome).
RESULT_ATTRS = ("best_epoch", "stopped_epoch", "test_acc", "selected_val_acc")


def _ending(trial: FrozenTrial, exp: Experiment) -> tuple[str, str, str]:
    """(studylib status, MLflow status, reason) of a finished trial, from Optuna alone."""
    note = "re-logged from Optuna: its own MLflow run was lost or never written"
    if trial.state == TrialState.COMPLETE:
        stopped = trial.user_attrs.get("stopped_epoch")
        early = exp.train.early_stopping and stopped is not None and stopped < exp.train.max_epochs
        return ("early_stopped" if early else "completed"), "FINISHED", note
    if trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values, default=0)
        return "pruned", "FINISHED", f"pruned at epoch {last}; {note}"
    if trial.user_attrs.get(DIVERGED_ATTR):
        return "diverged", "FAILED", f"{trial.user_attrs[DIVERGED_ATTR]}; {note}"
    failure = trial.user_attrs.get(FAILURE_ATTR, "")
    reason = f"{failure or 'failed'}: {trial.user_attrs.get(REASON_ATTR, 'no reason recorded')}"
    if failure in ("killed", "interrupted"):
        return "killed", "KILLED", f"{reason}; {note}"
    return "crashed", "FAILED", f"{reason}; {note}"


def relog(study: optuna.Study, tracker: Tracker, exp: Experiment, parent_id: str) -> None:
    """Finished trials without an MLflow record get one from what Optuna holds, under this
    sweep's parent run; if that fails too, the error names them."""
    try:
        relogged = relog_missing(study, tracker, exp, parent_id)
    except TrackingUnavailable as exc:
        raise TrackingUnavailable(
            f"{exc}; finished trials lacking an MLflow record stay without one (sweep again "
            "with the tracking store back to re-log them from Optuna)"
        ) from None
    if relogged:
        say(
            f"trials {', '.join(map(str, relogged))} had no MLflow run: re-logged from Optuna "
            "(parameters, validation curve, value and kept results; no train curves or weights)"
        )


def mark_best_run(tracker: Tracker, study: optuna.Study) -> None:
    """Move the `studylib.best` tag to the run of the study's best trial as it stands now
    (called whenever a sweep closes, so it follows the study as it grows). A best trial whose
    own run was lost (re-logged runs have no link from Optuna) leaves the tag where it was."""
    run_id = study.best_trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        # A run deleted from MLflow: nothing to tag.
        with contextlib.suppress(MlflowException):
            tracker.mark_best(run_id)
