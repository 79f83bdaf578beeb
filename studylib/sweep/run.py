"""Running a sweep: open the study, run its trials under one parent MLflow run, summarize.

The search space is space.py; the objective is the validation loss of the weights a trial keeps
(the best epoch's with early stopping, the last epoch's without). Trial 0 is the unregularized
baseline. The study lives in Optuna storage and resumes: a second `sweep` adds trials until the
requested total is reached.

Any number of `sweep` processes may work on one study, on one machine (journal file) or many
(PostgreSQL): each claims trials through the one protocol (claim.py), and trials of dead workers
are failed and queued again with the same parameters (recovery.py). SIGINT and SIGTERM close
the current trial in both systems (FAIL in Optuna, KILLED in MLflow) and stop. `--workers N`
starts N - 1 more such processes on this machine (workers.py); `--population P` trains P
claimed trials at once as one batched model (loops.run_population).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from studylib.config import Experiment, Settings
from studylib.console import Progress, say
from studylib.data import load_splits
from studylib.errors import stop_on_signals
from studylib.names import (
    BEST_TRIAL_TAG,
    OWNER_ATTR,
    ROLE_TAG,
    STORAGE_TAG,
    STUDY_TAG,
)
from studylib.redact import redact
from studylib.sweep.loops import open_share, trial_loop
from studylib.sweep.preflight import check_sweep
from studylib.sweep.recovery import (
    Worker,
    audit_records,
    close_dead_sweeps,
    mark_best_run,
    relog,
)
from studylib.sweep.study import counted_trials
from studylib.sweep.trial import TrialOutcome, run_trial
from studylib.sweep.workers import run_workers
from studylib.tracking import (
    TrackingUnavailable,
    applicable_params,
    environment_tags,
    group_tags,
    open_tracker,
)
from studylib.train import resolve_device


@dataclass
class SweepSummary:
    study_name: str
    parent_run_id: str
    trials_done: int
    trials_run: int  # by this process
    best_value: float | None
    best_trial: int | None
    seconds: float
    writer_seconds: float = 0.0  # this process's writer's CPU time (workers' writers apart)
    writer_waited: float = 0.0  # how long this process waited for its writer


def run_sweep(
    exp: Experiment,
    settings: Settings,
    trials: int | None = None,
    *,
    new_study: bool = False,
    workers: int = 1,
    population: int = 1,
) -> SweepSummary:
    """Run the study until it holds `trials` (default: the experiment's) counted trials.

    With `workers` > 1 the trials run in that many processes (workers.py); with `population`
    > 1 that many trials train at once as one batched model (loops.run_population).
    """
    started = time.monotonic()
    check_sweep([exp], settings, workers, population)  # nothing is opened before it passes
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = trials if trials is not None else exp.sweep.trials
    with stop_on_signals(at_safe_points=True):
        progress = Progress(total, 0, settings.progress)
        share = open_share(exp, settings, total, progress, new_study=new_study)
        exp, study, tracker = share.exp, share.study, share.tracker
        for note in close_dead_sweeps(tracker):
            say(note)
        lacking = audit_records(study, tracker)
        if lacking:
            say(f"trials lacking complete MLflow records: {', '.join(lacking)}")
        done = counted_trials(study)
        progress.sync(min(done, total))
        if study.best_trials:
            progress.best = study.best_value
        parent = tracker.start_run(
            f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                ROLE_TAG: "sweep",
                STUDY_TAG: exp.name,
                STORAGE_TAG: redact(settings.storage),
                OWNER_ATTR: json.dumps(Worker.current().as_attr()),
                **environment_tags(),
                **group_tags(exp),
            },
        )
        parent.log_params(applicable_params(exp))
        share.parent_id = parent.run_id
        if lacking:
            relog(study, tracker, exp, parent.run_id)
        status = "FINISHED"
        lost: BaseException | None = None  # the tracker gone (here or in a writer)
        try:
            with tracker.system_metrics(parent.run_id):
                if workers > 1:  # N processes on this machine, this one among them
                    run_workers(share, workers, population)
                else:  # one process: trials one at a time, or P at a time as one batched model
                    trial_loop(share, population)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException as exc:
            status = "FAILED"
            if isinstance(exc, TrackingUnavailable):
                lost = exc
            raise
        finally:
            progress.close()
            finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            summary = SweepSummary(
                study_name=exp.name,
                parent_run_id=parent.run_id,
                trials_done=counted_trials(study),
                trials_run=share.tally.ran,
                best_value=study.best_value if finished else None,
                best_trial=study.best_trial.number if finished else None,
                seconds=time.monotonic() - started,
                writer_seconds=share.tally.writer_seconds,
                writer_waited=share.tally.writer_waited,
            )
            if tracker.down is None and lost is None:  # else the next sweep closes it
                parent.log_metrics(
                    {"trials_done": summary.trials_done, "trials_run": summary.trials_run}
                )
                if summary.best_value is not None:
                    parent.log_metrics({"best_value": summary.best_value})
                    parent.set_tags({BEST_TRIAL_TAG: summary.best_trial})
                    mark_best_run(tracker, study)
                parent.finish(status)
    if summary.trials_done < total:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        say(
            f"study {exp.name} holds {summary.trials_done} of {total} trials; trials "
            f"{[t.number for t in running]} still run on other machines"
        )
    return summary


def run_single(exp: Experiment, settings: Settings) -> TrialOutcome:
    """`studylib train`: one run with the experiment's fixed values, logged like a trial."""
    with stop_on_signals(at_safe_points=True):
        device = resolve_device(settings.device)
        splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(device)
        tracker = open_tracker(exp, settings)
        return run_trial(
            exp,
            splits,
            tracker,
            run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={ROLE_TAG: "train", STUDY_TAG: exp.name},
            speed=settings.speed,
            prune_evaluate=True,
        )
