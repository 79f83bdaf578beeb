"""The loops that train a study's trials: one at a time, or a population at a time.

`trial_loop` is what every process working on a study runs (the main process, each
`--workers` process, any launcher's worker): claim trials through the one protocol
(claim.py), train them, tell how they ended, until the study holds its total. `Share` is what
one process needs for that, opened the same way everywhere by `open_share`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from studylib.config import Experiment, Settings
from studylib.console import Progress
from studylib.data import Splits, load_splits
from studylib.errors import ConfigError, checkpoint, disk_full
from studylib.locks import exclusive
from studylib.names import RUN_ID_ATTR
from studylib.sweep.claim import (
    claim_trials,
    fail_trial,
    heartbeat,
    record_outcome,
    record_pruned,
    watch,
)
from studylib.sweep.storage import make_storage
from studylib.sweep.study import counted_trials, open_study
from studylib.sweep.trial import run_trial, trial_epoch_callback, trial_setup
from studylib.tracking import (
    Tracker,
    TrackingUnavailable,
    close_interrupted_run,
    close_trial_run,
    open_tracker,
    start_trial_run,
)
from studylib.train import resolve_device
from studylib.train.population import Population, fit_population

POLL_SECONDS = 1.0  # how often a process with nothing to claim looks at the others' trials


@dataclass
class Tally:
    ran: int = 0  # trials this process (or its workers) ran to an end


@dataclass
class Share:
    """What one process needs to run its share of a sweep: the main process, or a worker."""

    exp: Experiment
    settings: Settings
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    tracker: Tracker
    splits: Splits
    total: int  # counted trials the study must hold at the end
    progress: Progress
    tally: Tally
    parent_id: str | None = None  # the sweep's MLflow parent run, once it exists


def open_share(
    exp: Experiment,
    settings: Settings,
    total: int,
    progress: Progress,
    *,
    new_study: bool = False,
    parent_id: str | None = None,
) -> Share:
    """Open the study, its data and its MLflow experiment, as every process of a sweep does."""
    exp, study, storage, tracker = open_records(exp, settings, new_study=new_study)
    device = resolve_device(settings.device)
    splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(device)
    return Share(
        exp, settings, study, storage, tracker, splits, total, progress, Tally(), parent_id
    )


def open_records(
    exp: Experiment, settings: Settings, *, new_study: bool = False
) -> tuple[Experiment, optuna.Study, optuna.storages.BaseStorage, Tracker]:
    """The study (created or resumed; `exp` renamed if --new-study chose another) and its
    MLflow experiment, without the data: what a launcher that trains nothing itself opens."""
    # Optuna creates its tables in a fresh database without a lock; workers doing so at once
    # on PostgreSQL fail ("duplicate key ... pg_type"): serialize the first open.
    with exclusive(settings.storage, "optuna-init"):
        storage = make_storage(settings.storage, settings.heartbeat_seconds)
    study = open_study(exp, settings, storage, new_study=new_study)
    if study.study_name != exp.name:
        exp = exp.with_values({"name": study.study_name})
    return exp, study, storage, open_tracker(exp, settings)


def trial_loop(
    share: Share, population: int = 1, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """Claim trials (one, or `population` at a time), train them, tell how they ended; until
    the study holds its total. `should_stop`: checked before each claim (a worker beside this
    one failed, or every trial is claimed)."""
    while not should_stop():
        checkpoint()  # a stop signal noted since the last safe point, raised before a claim
        s = share
        claim = claim_trials(s.study, s.storage, s.exp, s.settings, s.tracker, s.total, population)
        s.progress.sync(min(counted_trials(s.study), s.total))
        if claim.trials:
            with (
                heartbeat(s.storage, s.study, claim.trials),
                watch(s.study, s.storage, s.settings, s.tracker),
            ):
                if population > 1:
                    run_population(share, claim.trials)
                else:
                    run_claimed(share, claim.trials[0])
        elif claim.wait:
            time.sleep(POLL_SECONDS)
        else:
            return


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(failure kind, reason) of a trial that an exception ended; only "crashed" is its own
    fault, so every other kind runs again (recovery.queue_retries)."""
    if disk_full(exc) is not None:
        return "disk_full", f"a write found no space: {disk_full(exc)}"
    if isinstance(exc, TrackingUnavailable):
        return "tracking", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"interrupted by {exc or 'SIGINT'}"
    if isinstance(exc, ConfigError):
        return "refused", str(exc)
    return "crashed", f"{type(exc).__name__}: {exc}"


def run_claimed(share: Share, trial: optuna.Trial) -> None:
    """Train one claimed trial and tell Optuna how it ended."""
    study, progress = share.study, share.progress
    progress.start_trial(trial.number)
    plan = trial_setup(share.exp, trial, share.storage)
    try:
        outcome = run_trial(
            plan.exp,
            share.splits,
            share.tracker,
            run_name=plan.run_name,
            tags=plan.tags,
            parent_id=share.parent_id,
            trial=trial,
            progress=progress,
            speed=share.settings.speed,
        )
    except optuna.TrialPruned:
        record_pruned(study, trial)
        share.tally.ran += 1
        progress.finish_trial(None)
        return
    except BaseException as exc:
        fail_trial(study, trial, *failure_of(exc))
        if isinstance(exc, TrackingUnavailable):
            raise TrackingUnavailable(
                f"{exc}. Optuna is consistent: trial {trial.number} is marked FAIL and runs "
                "again when you rerun the sweep with the server back"
            ) from None
        raise
    share.tally.ran += 1
    progress.finish_trial(record_outcome(study, trial, outcome.result))


def run_population(share: Share, trials: list[optuna.Trial]) -> None:
    """Train claimed trials at once as one batched model (train/population.py); each member
    keeps its own MLflow run and Optuna trial, exactly as a sequential trial does."""
    study, splits, progress = share.study, share.splits, share.progress
    plans = [trial_setup(share.exp, trial, share.storage) for trial in trials]
    progress.start_trial(f"{trials[0].number}-{trials[-1].number}")
    runs = []
    try:
        batch = Population([plan.exp for plan in plans], splits)
        for trial, plan in zip(trials, plans, strict=True):
            run = start_trial_run(
                plan.exp,
                share.tracker,
                plan.run_name,
                plan.tags,
                share.parent_id,
                share.settings.speed,
                batch.parameter_count,
                splits.x_train.device,
                trial.params,
                link=lambda run_id, trial=trial: trial.set_user_attr(RUN_ID_ATTR, run_id),
            )
            runs.append(run)
        callbacks = [
            trial_epoch_callback(run, plan.exp, trial, progress)
            for run, plan, trial in zip(runs, plans, trials, strict=True)
        ]
        outcomes = fit_population(batch, splits, callbacks)
    except BaseException as exc:  # nothing of this population finished: close it all
        for run in runs:
            close_interrupted_run(run, exc)
        for trial in trials:
            fail_trial(study, trial, *failure_of(exc))
        raise
    failure = None
    for trial, run, plan, outcome in zip(trials, runs, plans, outcomes, strict=True):
        if outcome.error is not None:
            close_interrupted_run(run, outcome.error)
            if isinstance(outcome.error, optuna.TrialPruned):
                record_pruned(study, trial)
                share.tally.ran += 1
            else:
                fail_trial(study, trial, *failure_of(outcome.error))
                failure = failure or outcome.error
            progress.finish_trial(None)
            continue
        close_trial_run(run, plan.exp, outcome.result, splits.data_metrics)
        share.tally.ran += 1
        progress.finish_trial(record_outcome(study, trial, outcome.result))
    if failure is not None:
        raise failure
