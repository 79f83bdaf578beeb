"""A trial's MLflow life: one run opened with its config, fed its curve, closed with how it
ended. Sweep trials, population members, ablation arms and `studylib train` runs all go through
these three functions, so every run of every mode carries the same params, tags and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch

from studylib.config import Experiment, Speed
from studylib.names import (
    ARCH_TAG,
    COMPILE_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    GROUP_TAG,
    PRECISION_TAG,
    REASON_TAG,
    RUN_SEED_TAG,
    STATUS_TAG,
)
from studylib.tracking.records import RecordedRun, Recorder
from studylib.tracking.store import Run, Tracker, TrackingUnavailable, environment_tags
from studylib.train import TrainResult


def group_tags(exp: Experiment) -> dict[str, str]:
    return {GROUP_TAG: exp.group} if exp.group else {}


def start_trial_run(
    exp: Experiment,
    tracker: Tracker | Recorder,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None,
    speed: Speed,
    parameters: int,
    device: torch.device,
    optuna_params: dict[str, Any] | None = None,
    link: Callable[[str], None] | None = None,
) -> Run | RecordedRun:
    """The MLflow run of one trial, with its tags and its full resolved config as params.

    `optuna_params`: the trial's own Optuna parameters (`l1_on`, ...), logged as `optuna.*`:
    the report rebuilds the search from them for its importance figure. `link(run_id)` runs as
    soon as the run exists, before anything else is written to it: a trial that dies (or
    loses the tracking server) right after leaves a trace of its run.
    """
    run = tracker.start_run(
        run_name,
        tags={
            **tags,
            **environment_tags(),
            ARCH_TAG: exp.model.arch,
            DATASET_TAG: exp.data.name,
            RUN_SEED_TAG: str(exp.seed),
            DEVICE_TAG: str(device),
            PRECISION_TAG: speed.precision,
            COMPILE_TAG: str(speed.compile),
            **group_tags(exp),
        },
        parent_id=parent_id,
    )
    if link is not None and run.run_id is not None:  # a recorded run: its writer links it
        link(run.run_id)
    params: dict[str, Any] = {**exp.flat(), "model.parameters": parameters}
    params.update({f"optuna.{name}": value for name, value in (optuna_params or {}).items()})
    run.log_params(params)  # one write (per 100 params): each MLflow call is a transaction
    return run


def close_trial_run(
    run: Run | RecordedRun,
    exp: Experiment,
    result: TrainResult,
    data_metrics: dict[str, float] | None = None,
) -> None:
    """Record how a trial ended: curve, final metrics, config and weights; FAILED if diverged.

    The closing tags, final metrics and the rest of the curve go out in one batch."""
    if result.status == "diverged" and result.history:
        run.log_epoch(len(result.history), result.history[-1])  # the finite part of that epoch
    closing = {STATUS_TAG: result.status, REASON_TAG: result.reason}
    if result.status == "diverged":
        run.closing(tags=closing)
        run.finish("FAILED")
        return
    for epoch, figures in enumerate(result.test_curve, start=1):  # read after training ended
        run.log_epoch(epoch, figures)
    run.log_files(
        json_files={"config.json": exp.model_dump(mode="json")},
        state_dicts={"model.pt": result.state_dict} if result.state_dict is not None else None,
    )
    # data_metrics: OOV rates (text); train_seconds: the trial's wall time in `fit`
    metrics = {**result.final, **(data_metrics or {})}
    if result.seconds:
        metrics["train_seconds"] = result.seconds
    run.closing(tags=closing, metrics=metrics)
    run.finish("FINISHED")


def close_interrupted_run(run: Run | RecordedRun, exc: BaseException) -> None:
    """Close the run of a trial that training left by an exception: pruned, killed or crashed."""
    if isinstance(exc, TrackingUnavailable):
        return  # nothing more can be written
    if isinstance(exc, optuna.TrialPruned):
        run.closing(tags={STATUS_TAG: "pruned", REASON_TAG: str(exc)})
        run.finish("FINISHED")
    elif isinstance(exc, KeyboardInterrupt):
        reason = f"interrupted by {exc or 'SIGINT'}"
        run.closing(tags={STATUS_TAG: "killed", REASON_TAG: reason})
        run.finish("KILLED")
    elif isinstance(exc, Exception):
        reason = f"{type(exc).__name__}: {exc}"
        run.closing(tags={STATUS_TAG: "crashed", REASON_TAG: reason})
        run.finish("FAILED")
