"""What every launcher shares: the worker's body, the guard rails, and the launching command's
watch over the study.

A launched worker is `run_worker`: it opens the study exactly as the main process of a sweep
does (`loops.open_share`) and runs the same `loops.trial_loop`, so the claim protocol, the
heartbeat, dead-worker recovery and the sampler seed rule are those of `--workers` and of a
sweep run by hand. The launching command (`launch_sweep`) creates the study and the sweep's
parent MLflow run, submits the workers (slurm.py, ray.py), then watches the *storage*, not the
engine's results: the one progress bar counts the study's trials, and the study's outcome is
the command's. An engine's own view of a task (submitit's result, a Ray object) can hang or
be lost with a killed task; the storage cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import optuna
import torch
from optuna.trial import TrialState

from studylib.config import Experiment, LauncherConfig, Settings
from studylib.console import Progress, say
from studylib.errors import ConfigError, Interrupted, stop_on_signals
from studylib.locations import Location, on_shared_file_system, parse_storage, parse_tracking_uri
from studylib.locks import exclusive
from studylib.names import (
    BEST_TRIAL_TAG,
    LAUNCHER_TAG,
    OWNER_ATTR,
    REASON_TAG,
    ROLE_TAG,
    STORAGE_TAG,
    STUDY_TAG,
)
from studylib.redact import MASK, install_log_filter, redact, remember
from studylib.sweep.ablation import (
    ablation_steps,
    finish_ablation,
    open_ablation_share,
    open_ledger_records,
    start_ablation_run,
)
from studylib.sweep.loops import open_records, open_share, trial_loop
from studylib.sweep.owners import JobOwner
from studylib.sweep.recovery import (
    Worker,
    audit_records,
    close_dead_sweeps,
    mark_best_run,
    relog,
)
from studylib.sweep.study import count_done, counted_trials
from studylib.tracking import Run, Tracker, applicable_params, environment_tags, group_tags

POLL_SECONDS = 1.0  # how often the launching command reads the study and asks the engine
STOP_GRACE_SECONDS = 120.0  # workers of a complete study exit by themselves within this
Kind = Literal["local", "slurm", "ray"]
Part = Literal["sweep", "ablation"]


@dataclass(frozen=True)
class Launch:
    """How `studylib sweep` starts its workers (the command line's launcher flags)."""

    kind: Kind = "local"
    jobs: int = 1
    config: LauncherConfig = field(default_factory=LauncherConfig)
    detach: bool = False
    dry_run: bool = False
    one_machine: bool = False  # the cluster is this machine: loopback and local files do
    shared_folder: bool = False  # file locations lie on a folder every node mounts


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a launched worker needs, as it travels to the engine (submitit's pickle, a
    Ray task's arguments: readable by others, so passwords are masked in `settings`)."""

    exp: Experiment
    settings: Settings
    total: int
    parent_id: str
    population: int
    threads: int
    done_at_start: int  # counted trials when the sweep was launched
    part: Part = "sweep"  # the sweep's trials, or the [ablation]'s units (ablation.py)


@dataclass(frozen=True)
class Secrets:
    """The storage and tracking locations with their passwords: never pickled into a file, never
    on a command line. Slurm passes them in the job's environment, Ray in its object store."""

    storage: str
    tracking_uri: str

    @classmethod
    def of(cls, settings: Settings) -> Secrets | None:
        """The secrets of `settings`, or None when no password is in them."""
        if redact(settings.storage) == settings.storage and (
            redact(settings.tracking_uri) == settings.tracking_uri
        ):
            return None
        return cls(settings.storage, settings.tracking_uri)


def masked(settings: Settings) -> Settings:
    """`settings` as they may travel: passwords in their URLs replaced by ***."""
    return replace(
        settings, storage=redact(settings.storage), tracking_uri=redact(settings.tracking_uri)
    )


def unmasked(spec: WorkerSpec, secrets: Secrets | None) -> Settings:
    """The worker's settings with the passwords that came by the engine's secret channel."""
    settings = replace(spec.settings, progress=False)
    if secrets is None:
        if MASK in settings.storage or MASK in settings.tracking_uri:
            raise ConfigError(
                "the storage or tracking password did not reach this worker (masked in its "
                "arguments, and not in its environment); keep passwords in ~/.pgpass or "
                "PGPASSWORD and MLFLOW_TRACKING_PASSWORD on the nodes instead"
            )
        return settings
    for given, real in (
        (settings.storage, secrets.storage),
        (settings.tracking_uri, secrets.tracking_uri),
    ):
        if redact(real) != given:
            raise ConfigError(
                f"this worker was given {redact(real)} in its environment, but launched for "
                f"{given}: two sweeps' settings mixed"
            )
    return replace(settings, storage=secrets.storage, tracking_uri=secrets.tracking_uri)


# ---------------------------------------------------------------------------------------------
# The worker: what runs on each node


def run_worker(
    spec: WorkerSpec, secrets: Secrets | None, also_stop_on: tuple[int, ...] = ()
) -> dict:
    """One launched worker: the sweep's trial loop under the launch's parent run, until the
    study holds its total. A signal (`scancel`, a preemption, Ray's cancel; `also_stop_on`
    adds the launcher's own) closes the trial it is on, FAIL in Optuna and KILLED in MLflow,
    so another worker runs it again; the worker then returns how it stopped. The last worker
    of a complete study closes the parent run."""
    settings = unmasked(spec, secrets)
    remember(settings.storage, settings.tracking_uri)
    install_log_filter()
    torch.set_num_threads(spec.threads)
    with contextlib.suppress(RuntimeError):  # refused once inter-op work has started
        torch.set_num_interop_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = {"host": socket.gethostname(), "pid": os.getpid(), "ran": 0, "stopped_by": None}
    share = None
    # A stop signal is raised only at safe points (between epochs, before a claim): raised
    # inside a database commit it would turn an interruption into a storage error.
    with stop_on_signals(also_stop_on, at_safe_points=True):
        try:
            progress = Progress(spec.total, 0, enabled=False)
            opener = open_ablation_share if spec.part == "ablation" else open_share
            share = opener(spec.exp, settings, spec.total, progress, parent_id=spec.parent_id)
            trial_loop(share, spec.population if spec.part == "sweep" else 1)
        except Interrupted as exc:
            report["stopped_by"] = str(exc)
        finally:
            if share is not None:
                report["ran"] = share.tally.ran
    if share is not None and report["stopped_by"] is None:
        if spec.part == "ablation":
            finish_ablation(
                spec.exp, settings, share.study, share.storage, share.tracker, spec.parent_id
            )
        else:
            finish_parent(spec, settings, share.study, share.tracker)
    return report


def finish_parent(
    spec: WorkerSpec, settings: Settings, study: optuna.Study, tracker: Tracker
) -> bool:
    """Close the sweep's parent run FINISHED with its summary once the study is complete;
    whoever gets there first (the last worker, or the launching command) does it, once."""
    with exclusive(settings.storage, f"study:{study.study_name}"):
        trials = study.get_trials(deepcopy=False)
        done = count_done(trials)
        if done < spec.total or tracker.run_states("sweep").get(spec.parent_id) != "RUNNING":
            return False
        metrics = {"trials_done": done, "trials_run": max(0, done - spec.done_at_start)}
        tags = {}
        if any(t.state == TrialState.COMPLETE for t in trials):
            metrics["best_value"] = study.best_value
            tags[BEST_TRIAL_TAG] = study.best_trial.number
            mark_best_run(tracker, study)
        Run(tracker, spec.parent_id).finish("FINISHED", tags=tags, metrics=metrics)
    return True


def close_parent(tracker: Tracker, parent_id: str, status: str, reason: str) -> None:
    """End a launched sweep's parent run that will not finish (FAILED or KILLED)."""
    with contextlib.suppress(Exception):  # the reason is already on its way to the user
        tracker.close_run(parent_id, status, {REASON_TAG: redact(reason)[:2000]})


# ---------------------------------------------------------------------------------------------
# Guard rails: workers on other machines must reach the study and its runs


def check_reachable(settings: Settings, launch: Launch) -> None:
    """Refuse, in one line, a storage or tracking location only this machine can reach, unless
    the launch says the cluster is this machine (`--one-machine`) or the files lie on a folder
    every node mounts (`--shared-folder`; NFS, Lustre, ... are recognized by themselves)."""
    if launch.kind == "local":
        return
    storage = parse_storage(settings.storage)
    if storage.kind == "sqlite":
        raise ConfigError(
            f"--storage = {storage.redacted}: SQLite locks under parallel Optuna workers; use "
            "postgresql://USER@HOST:5432/DB (or a journal file on a shared folder)"
        )
    if launch.one_machine or (launch.kind == "ray" and launch.config.ray.address is None):
        return  # the cluster is this machine (a Ray started here is)
    tracking = parse_tracking_uri(settings.tracking_uri)
    for flag, location, instead in (
        ("--storage", storage, "postgresql://USER@DBHOST:5432/DB"),
        ("--tracking-uri", tracking, "http://TRACKINGHOST:5000 (an MLflow server)"),
    ):
        if location.reachable_from_other_machines or (location.is_file and launch.shared_folder):
            continue
        raise ConfigError(
            f"{flag} = {location.redacted}: {unreachable_because(location)}, but --launcher "
            f"{launch.kind} runs workers on other machines; use {instead}"
            + (
                ", or pass --shared-folder if every node mounts that folder"
                if location.is_file
                else ""
            )
            + ", or --one-machine if the cluster is this machine"
        )


def unreachable_because(location: Location) -> str:
    if location.is_file:
        return f"a file on a folder other machines do not mount ({location.path})"
    if location.host is None:
        return "a local socket of this machine"
    return f"{location.host} is this machine only"


def check_folder_shared(folder: Path, what: str, launch: Launch) -> None:
    """A folder every node must read (submitit's pickles, the logs)."""
    if launch.one_machine or launch.shared_folder or on_shared_file_system(folder):
        return
    raise ConfigError(
        f"{what} = {folder}: on a folder other machines do not mount, but the nodes read the "
        "submitted workers from it; put it on a shared folder (your home or project space, "
        "usually), or pass --shared-folder if they mount it, or --one-machine"
    )


def absolute(settings: Settings) -> Settings:
    """File locations made absolute: a worker may start in another working folder."""
    storage, tracking = parse_storage(settings.storage), parse_tracking_uri(settings.tracking_uri)
    values = {
        "cache_dir": settings.cache_dir.resolve(),
        "artifact_root": settings.artifact_root.resolve(),
    }
    if storage.kind == "journal" and storage.path is not None:
        values["storage"] = str(storage.path.resolve())
    if tracking.kind == "sqlite" and tracking.path is not None:
        query = settings.tracking_uri.partition("?")[2]
        values["tracking_uri"] = f"sqlite:///{tracking.path.resolve()}" + (
            f"?{query}" if query else ""
        )
    return replace(settings, **values)


# ---------------------------------------------------------------------------------------------
# The launching command


@dataclass
class FleetState:
    """What the engine says of the launched workers."""

    alive: int  # running, pending or being retried
    notes: list[str] = field(default_factory=list)  # one per worker that ended, said once
    crashed: str | None = None  # a worker that raised: the sweep stops, as with --workers


class Fleet(Protocol):
    """The workers of one launch, as their engine sees them."""

    describe: str  # "Slurm job 12 (2 tasks) on cluster x"
    owner: JobOwner | None  # who owns the parent run; None: the launching process does

    def poll(self) -> FleetState: ...

    def stop_pending(self) -> None: ...

    def cancel(self) -> None: ...

    def watch_hint(self) -> list[str]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    def submit(self, spec: WorkerSpec, secrets: Secrets | None) -> Fleet: ...

    def dry_run(self, spec: WorkerSpec) -> str: ...


@dataclass
class LaunchOutcome:
    study_name: str
    parent_run_id: str
    trials_done: int
    trials_run: int
    best_value: float | None
    best_trial: int | None
    seconds: float
    detached: str | None = None  # how to watch, when the command did not wait


def launch_sweep(
    exp: Experiment,
    settings: Settings,
    launch: Launch,
    engine: Engine,
    trials: int | None = None,
    *,
    new_study: bool = False,
    population: int = 1,
) -> LaunchOutcome:
    """Create the study and its parent run, submit `launch.jobs` workers to `engine`, and (unless
    detached) watch the study until it holds its total; the study's outcome is the result."""
    started = time.monotonic()
    total = trials if trials is not None else exp.sweep.trials
    settings = absolute(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with stop_on_signals():
        exp, study, _, tracker = open_records(exp, settings, new_study=new_study)
        for note in close_dead_sweeps(tracker):
            say(note)
        lacking = audit_records(study, tracker)
        if lacking:
            say(f"trials lacking complete MLflow records: {', '.join(lacking)}")
        done = counted_trials(study)
        if done >= total:
            return outcome_of(exp, study, "", total, done, started)
        parent = tracker.start_run(
            f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                ROLE_TAG: "sweep",
                STUDY_TAG: exp.name,
                STORAGE_TAG: redact(settings.storage),
                # Until the engine takes the job: a launch that dies submitting is closed.
                OWNER_ATTR: json.dumps(Worker.current().as_attr()),
                LAUNCHER_TAG: f"{launch.kind}: submitting {launch.jobs} workers",
                **environment_tags(),
                **group_tags(exp),
            },
        )
        parent.log_params(applicable_params(exp))
        relog(study, tracker, exp, parent.run_id)
        spec = WorkerSpec(
            exp=exp,
            settings=masked(settings),
            total=total,
            parent_id=parent.run_id,
            population=population,
            threads=1,
            done_at_start=done,
        )
        detached = submit_and_watch(
            engine,
            spec,
            settings,
            launch,
            study,
            tracker,
            parent,
            lambda: finish_parent(spec, settings, study, tracker),
        )
        return outcome_of(exp, study, parent.run_id, total, done, started, detached=detached)


def launch_ablation(
    exp: Experiment, settings: Settings, launch: Launch, engine: Engine
) -> LaunchOutcome:
    """An experiment's [ablation] on the engine: its parent run and its ledger of units
    (ablation.py) made here, `launch.jobs` workers claiming the units, watched like a sweep."""
    started = time.monotonic()
    settings = absolute(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = len(ablation_steps(exp))
    with stop_on_signals():
        study, storage, tracker = open_ledger_records(exp, settings)
        for note in close_dead_sweeps(tracker):
            say(note)
        done = counted_trials(study)
        if done >= total:
            return outcome_of(exp, study, "", total, done, started)
        parent = start_ablation_run(exp, tracker, Worker.current().as_attr())
        spec = WorkerSpec(
            exp=exp,
            settings=masked(settings),
            total=total,
            parent_id=parent.run_id,
            population=1,
            threads=1,
            done_at_start=done,
            part="ablation",
        )

        def finish() -> None:
            finish_ablation(exp, settings, study, storage, tracker, parent.run_id)

        detached = submit_and_watch(
            engine, spec, settings, launch, study, tracker, parent, finish, "units"
        )
        return outcome_of(exp, study, parent.run_id, total, done, started, detached=detached)


def submit_and_watch(
    engine: Engine,
    spec: WorkerSpec,
    settings: Settings,
    launch: Launch,
    study: optuna.Study,
    tracker: Tracker,
    parent: Run,
    finish: Callable[[], object],
    what: str = "trials",
) -> str | None:
    """Submit the workers of `spec`, hand the parent run to their job, and (unless detached:
    then how to watch is returned) watch `study` until it holds `spec.total`; a failure or a
    stop closes the parent run, success `finish`es it (once, whoever is first)."""
    try:
        fleet = engine.submit(spec, Secrets.of(settings))
    except BaseException as exc:
        close_parent(tracker, parent.run_id, "FAILED", f"submission failed: {exc}")
        raise
    tags = {LAUNCHER_TAG: fleet.describe}
    if fleet.owner is not None:
        tags[OWNER_ATTR] = json.dumps(fleet.owner.as_attr())
    parent.set_tags(tags)
    if launch.detach:
        return "; ".join(fleet.watch_hint())
    total, done = spec.total, spec.done_at_start
    progress = Progress(total, min(done, total), settings.progress)
    try:
        failure = watch(fleet, study, total, progress, what)
    except KeyboardInterrupt:
        say(f"stopping {fleet.describe}: each worker closes the {what[:-1]} it is on")
        fleet.cancel()
        wait_until_ended(fleet, STOP_GRACE_SECONDS)
        close_parent(tracker, parent.run_id, "KILLED", "the launching command was stopped")
        raise
    finally:
        progress.close()
        fleet.close()
    if failure is not None:
        close_parent(tracker, parent.run_id, "FAILED", failure)
        raise RuntimeError(failure)
    finish()
    return None


def watch(
    fleet: Fleet, study: optuna.Study, total: int, progress: Progress, what: str = "trials"
) -> str | None:
    """Show the study's progress until it holds `total` (None) or cannot get there (why)."""
    while True:
        trials = study.get_trials(deepcopy=False)
        done = count_done(trials)
        progress.sync(min(done, total))
        state = fleet.poll()
        for note in state.notes:
            say(note)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        progress.bar.set_postfix_str(f"{state.alive} workers, {running} {what} running")
        if done >= total:  # complete, whatever a worker met on its way out
            # Workers of a complete study exit by themselves; tasks never started need not.
            fleet.stop_pending()
            if not wait_until_ended(fleet, STOP_GRACE_SECONDS):
                fleet.cancel()
            return None
        if state.crashed is not None:
            fleet.cancel()
            wait_until_ended(fleet, STOP_GRACE_SECONDS)
            return f"a worker failed, the others were stopped: {state.crashed}"
        if state.alive == 0:
            return (
                f"every worker of {fleet.describe} has ended and study {study.study_name} holds "
                f"{done} of {total} {what}; run the same command again to resume it"
            )
        time.sleep(POLL_SECONDS)


def wait_until_ended(fleet: Fleet, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        state = fleet.poll()
        for note in state.notes:
            say(note)
        if state.alive == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)


def outcome_of(
    exp: Experiment,
    study: optuna.Study,
    parent_id: str,
    total: int,
    done_at_start: int,
    started: float,
    detached: str | None = None,
) -> LaunchOutcome:
    trials = study.get_trials(deepcopy=False)
    done = count_done(trials)
    complete = any(t.state == TrialState.COMPLETE for t in trials)
    return LaunchOutcome(
        study_name=exp.name,
        parent_run_id=parent_id,
        trials_done=done,
        trials_run=max(0, done - done_at_start),
        best_value=study.best_value if complete else None,
        best_trial=study.best_trial.number if complete else None,
        seconds=time.monotonic() - started,
        detached=detached,
    )


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment for the block (what a child it starts inherits)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
