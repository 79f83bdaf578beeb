"""The loops that train a study's trials: one at a time, or a population at a time.

`trial_loop` is what every process working on a study runs (the main process, each
`--workers` process, any launcher's worker): claim trials through the one protocol
(claim.py), train them, hand their records and outcomes to the process's writer (writer.py),
which writes them while the next trials train, until the study holds its total. `Share` is what
one process needs for that, opened the same way everywhere by `open_share`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from studylib.config import Experiment, Settings
from studylib.console import Progress
from studylib.data import Splits, load_splits
from studylib.errors import ConfigError, checkpoint, disk_full
from studylib.locks import exclusive
from studylib.names import RUN_ID_ATTR
from studylib.sweep.claim import (
    Outcome,
    claim_trials,
    fail_trial,
    failed_outcome,
    heartbeat,
    tell,
    trained_outcome,
    watch,
)
from studylib.sweep.storage import make_storage
from studylib.sweep.study import counted_trials, open_study
from studylib.sweep.trial import run_trial, trial_epoch_callback, trial_setup
from studylib.sweep.writer import Message, Piece, Writer
from studylib.tracking import (
    RecordedRun,
    Recorder,
    Tracker,
    TrackingUnavailable,
    close_interrupted_run,
    close_trial_run,
    open_tracker,
    start_trial_run,
)
from studylib.tracking.store import FLUSH_SECONDS
from studylib.train import TrainResult, resolve_device
from studylib.train.population import Population, fit_population

POLL_SECONDS = 1.0  # how often a process with nothing to claim looks at the others' trials


@dataclass
class Tally:
    ran: int = 0  # trials this process (or its workers) ran to an end
    writer_seconds: float = 0.0  # this process's writer: its own CPU time (off the path)
    writer_waited: float = 0.0  # the time this process waited for its writer (on the path)


def sweep_unit(share: Share, trial: optuna.Trial, tracker: Tracker | Recorder) -> TrainResult:
    """What a claimed sweep trial does: its config (sampled, or the baseline's) trained as one
    run under the sweep's parent run, reported to the pruner each epoch."""
    plan = trial_setup(share.exp, trial, share.storage)
    writer = share.writer
    return run_trial(
        plan.exp,
        share.splits,
        tracker,
        run_name=plan.run_name,
        tags=plan.tags,
        parent_id=share.parent_id,
        trial=trial,
        progress=share.progress,
        speed=share.settings.speed,
        before_prune=writer.settle_outcomes if writer is not None else None,
    ).result


# What a claimed trial does, given where its run goes: a trained result (told as a sweep
# trial's: its selected validation loss and kept figures) or a value (told as it is). The
# sweep's trials are `sweep_unit`; an ablation's units (tune an arm, run an arm on a seed) are
# ablation.py's, claimed and recovered through the same loop.
Unit = Callable[["Share", optuna.Trial, "Tracker | Recorder"], "TrainResult | float"]


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
    writer: Writer | None = None  # writes this process's records (trial_loop starts it)
    unit: Unit = sweep_unit  # what a claimed trial does (one at a time; populations: sweeps)


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


# How a process opens its share: `open_share` (a sweep's trials) or an ablation's units.
Opener = Callable[..., Share]


def open_storage(settings: Settings) -> optuna.storages.BaseStorage:
    """The study storage, as every process of a sweep or an ablation opens it."""
    # Optuna creates its tables in a fresh database without a lock; workers doing so at once
    # on PostgreSQL fail ("duplicate key ... pg_type"): serialize the first open.
    with exclusive(settings.storage, "optuna-init"):
        return make_storage(settings.storage, settings.heartbeat_seconds)


def open_records(
    exp: Experiment, settings: Settings, *, new_study: bool = False
) -> tuple[Experiment, optuna.Study, optuna.storages.BaseStorage, Tracker]:
    """The study (created or resumed; `exp` renamed if --new-study chose another) and its
    MLflow experiment, without the data: what a launcher that trains nothing itself opens."""
    storage = open_storage(settings)
    study = open_study(exp, settings, storage, new_study=new_study)
    if study.study_name != exp.name:
        exp = exp.with_values({"name": study.study_name})
    return exp, study, storage, open_tracker(exp, settings)


def trial_loop(
    share: Share, population: int = 1, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """Claim trials (one, or `population` at a time), train them, have them written and told;
    until the study holds its total. `should_stop`: checked before each claim (a worker beside
    this one failed, or every trial is claimed).

    The order that keeps one process reproducible with its records written off the training
    path: everything handed to the writer is told before a claim, except the trials just
    trained, whose closing message is handed over right after the claim. So trial k is always
    asked with trials 0..k-2 told and k-1 running (a constant liar to the sampler), whatever
    the writer's pace, and trains while k-1 is written."""
    mode = share.settings.writer
    writer = share.writer = (
        None if mode == "off" else Writer(share.exp, share.settings, mode, share.study.study_name)
    )
    pending: Message | None = None
    training: list[int] = []  # the claimed trials being trained now

    def held() -> list[int]:
        """Trials this process holds until they are told: trained now, or handed over."""
        untold = writer.untold() if writer is not None else []
        waiting = [o.number for o in pending.outcomes] if pending is not None else []
        return sorted({*training, *untold, *waiting})

    try:
        with heartbeat(share.storage, share.study, held) as beat_now:
            try:
                while not should_stop():
                    checkpoint()  # a stop noted since the last safe point, raised before a claim
                    if writer is not None:
                        writer.settle()
                    s = share
                    claim = claim_trials(
                        s.study,
                        s.storage,
                        s.exp,
                        s.settings,
                        s.tracker,
                        s.total,
                        population,
                        writer=writer.owner_attr() if writer is not None else None,
                    )
                    if pending is not None:
                        assert writer is not None
                        writer.submit(pending)
                        pending = None
                        if not claim.trials:
                            continue  # what was just told may complete the study: look again
                    s.progress.sync(min(counted_trials(s.study), s.total))
                    if claim.trials:
                        training[:] = [trial.number for trial in claim.trials]
                        beat_now(training)
                        with watch(s.study, s.storage, s.settings, s.tracker):
                            if population > 1:
                                pending = run_population(share, claim.trials)
                            else:
                                pending = run_claimed(share, claim.trials[0])
                        training.clear()
                    elif claim.wait:
                        time.sleep(POLL_SECONDS)
                    else:
                        break
                if writer is not None:
                    if pending is not None:
                        writer.submit(pending)
                        pending = None
                    writer.close()
            except BaseException as exc:  # inside the heartbeat: the trials closed here are held
                if writer is not None:
                    close_unwritten(share, writer, pending, exc)
                raise
    finally:
        if writer is not None:
            share.tally.writer_seconds += writer.seconds
            share.tally.writer_waited += writer.waited
        share.writer = None


def close_unwritten(share: Share, writer: Writer, pending: Message | None, exc: BaseException):
    """After `exc` stopped the loop: the trials trained or handed over but not yet told. A
    working writer writes and tells them; if it failed, they are failed here (their MLflow
    runs are closed by the next sweep's audit), and a tracking error names them."""
    if writer.error is None:
        try:
            if pending is not None:
                writer.submit(pending)
            writer.settle()
        except BaseException:  # the writer failed meanwhile: fail what it did not tell
            pass
        else:
            writer.stop()
            return
    messages = [*writer.unacked.values(), *([pending] if pending is not None else [])]
    numbers = [outcome.number for message in messages for outcome in message.outcomes]
    cause = writer.error or exc
    numbers = still_running(share, numbers)
    for number in numbers:
        fail_trial(share.study, share.storage, number, *failure_of(cause))
    writer.stop()
    if isinstance(cause, TrackingUnavailable) and numbers:
        raise tracking_error(cause, numbers) from None


def tracking_error(exc: BaseException, numbers: list[int]) -> TrackingUnavailable:
    trials = f"trial {numbers[0]} is" if len(numbers) == 1 else f"trials {numbers} are"
    return TrackingUnavailable(
        f"{exc}. Optuna is consistent: {trials} marked FAIL and runs again when you rerun "
        "the sweep with the server back"
    )


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


def recorder_for(share: Share, number: int) -> Recorder | None:
    """Where a trial's MLflow run goes: recorded for the writer, or (no writer) written here."""
    writer = share.writer
    if writer is None:
        return None
    return Recorder(lambda record: writer.submit(Message([Piece(record, number)])), FLUSH_SECONDS)


def closing(
    share: Share, runs: list[tuple[int, RecordedRun | None]], outcomes: list[Outcome]
) -> Message | None:
    """The message that closes these trials' runs and tells their outcomes (writer), or None:
    without a writer the outcomes are told here, the runs already closed."""
    if share.writer is None:
        for outcome in outcomes:
            tell(share.study, share.storage, outcome)
        return None
    pieces = [Piece(run.final, n) for n, run in runs if run is not None and run.final is not None]
    return Message(pieces, outcomes)


def end_now(share: Share, message: Message | None, exc: BaseException) -> None:
    """A trial ended by `exc` (a stop, a crash): its run closed and its FAIL told before the
    exception goes on; what the writer could not tell is failed here."""
    writer = share.writer
    if message is None or writer is None:
        return
    try:
        writer.submit(message)
        writer.settle()
    except BaseException:  # the writer failed meanwhile
        for number in still_running(share, [o.number for o in message.outcomes]):
            fail_trial(share.study, share.storage, number, *failure_of(exc))


def still_running(share: Share, numbers: list[int]) -> list[int]:
    trials = share.study.get_trials(deepcopy=False)
    return [n for n in numbers if trials[n].state == TrialState.RUNNING]


def run_claimed(share: Share, trial: optuna.Trial) -> Message | None:
    """Train one claimed trial; the message that closes its run and tells its outcome, for the
    loop to hand to the writer (told here when there is none)."""
    progress, writer = share.progress, share.writer
    progress.start_trial(trial.number)
    recorder = recorder_for(share, trial.number)

    def recorded() -> list[tuple[int, RecordedRun | None]]:
        return [(trial.number, recorder.started[-1] if recorder and recorder.started else None)]

    try:
        result = share.unit(share, trial, recorder or share.tracker)
    except optuna.TrialPruned:
        share.tally.ran += 1
        progress.finish_trial(None)
        return closing(share, recorded(), [Outcome(trial.number, "pruned")])
    except BaseException as exc:
        told = failed_outcome(trial.number, *failure_of(exc))
        if writer is None or isinstance(exc, TrackingUnavailable):
            fail_trial(share.study, share.storage, trial.number, *failure_of(exc))
        else:
            end_now(share, closing(share, recorded(), [told]), exc)
        if isinstance(exc, TrackingUnavailable):
            raise tracking_error(exc, [trial.number]) from None
        raise
    share.tally.ran += 1
    if isinstance(result, TrainResult):
        told = trained_outcome(trial.number, result)
    else:
        told = Outcome(trial.number, "complete", result)
    progress.finish_trial(told.value)
    return closing(share, recorded(), [told])


def run_population(share: Share, trials: list[optuna.Trial]) -> Message | None:
    """Train claimed trials at once as one batched model (train/population.py); each member
    keeps its own MLflow run and Optuna trial, exactly as a sequential trial does. With a
    writer, the members' runs are created in one message before training and closed, with
    their outcomes, in one message after it."""
    splits, progress, writer = share.splits, share.progress, share.writer
    plans = [trial_setup(share.exp, trial, share.storage) for trial in trials]
    progress.start_trial(f"{trials[0].number}-{trials[-1].number}")
    runs: list = []
    try:
        batch = Population([plan.exp for plan in plans], splits)
        for trial, plan in zip(trials, plans, strict=True):
            run = start_trial_run(
                plan.exp,
                recorder_for(share, trial.number) or share.tracker,
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
        if writer is not None:  # every member's run created by one message
            writer.submit(
                Message([Piece(run.take(), t.number) for run, t in zip(runs, trials, strict=True)])
            )
        callbacks = [
            trial_epoch_callback(
                run,
                plan.exp,
                trial,
                progress,
                writer.settle_outcomes if writer is not None else None,
            )
            for run, plan, trial in zip(runs, plans, trials, strict=True)
        ]
        outcomes = fit_population(batch, splits, callbacks)
    except BaseException as exc:  # nothing of this population finished: close it all
        for run in runs:
            close_interrupted_run(run, exc)
        told = [failed_outcome(trial.number, *failure_of(exc)) for trial in trials]
        if writer is None or isinstance(exc, TrackingUnavailable):
            for trial in trials:
                fail_trial(share.study, share.storage, trial.number, *failure_of(exc))
        else:
            recorded = [(t.number, r) for t, r in zip(trials, runs, strict=False)]
            end_now(share, closing(share, recorded, told), exc)
        if isinstance(exc, TrackingUnavailable):
            raise tracking_error(exc, [trial.number for trial in trials]) from None
        raise
    failure = None
    told = []
    for trial, run, plan, outcome in zip(trials, runs, plans, outcomes, strict=True):
        if outcome.error is not None:
            close_interrupted_run(run, outcome.error)
            if isinstance(outcome.error, optuna.TrialPruned):
                told.append(Outcome(trial.number, "pruned"))
                share.tally.ran += 1
            else:
                told.append(failed_outcome(trial.number, *failure_of(outcome.error)))
                failure = failure or outcome.error
            progress.finish_trial(None)
            continue
        close_trial_run(run, plan.exp, outcome.result, splits.data_metrics)
        share.tally.ran += 1
        told.append(trained_outcome(trial.number, outcome.result))
        progress.finish_trial(told[-1].value)
    recorded = [
        (t.number, r if isinstance(r, RecordedRun) else None)
        for t, r in zip(trials, runs, strict=True)
    ]
    message = closing(share, recorded, told)
    if failure is not None:
        if message is not None:
            end_now(share, message, failure)
        raise failure
    return message
