"""One trial: its config from the sampled parameters, its training, its MLflow run.

`run_trial` trains one configuration and records it as one MLflow run; with an Optuna trial
it reports each epoch's validation loss so the pruner can stop it. Sweep trials, ablation arms
and `studylib train` all train through it; population members share its pieces
(`trial_setup`, `trial_epoch_callback`) and train in batches instead (loops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import BaseTrial

from studylib.config import DEFAULT_SPEED, Experiment, Speed, all_regularizers_off
from studylib.console import Progress
from studylib.data import Splits
from studylib.errors import checkpoint
from studylib.models import build_model
from studylib.names import (
    BASELINE_ATTR,
    BASELINE_TAG,
    NOTE_TAG,
    RETRY_OF_TAG,
    ROLE_TAG,
    RUN_ID_ATTR,
    STUDY_TAG,
    TRIAL_TAG,
)
from studylib.sweep.space import suggest
from studylib.sweep.study import trial_id
from studylib.tracking import (
    RecordedRun,
    Recorder,
    Run,
    Tracker,
    TrackingUnavailable,
    close_interrupted_run,
    close_trial_run,
    run_description,
    start_trial_run,
    trial_run_name,
)
from studylib.train import TrainResult, fit


@dataclass
class TrialOutcome:
    result: TrainResult
    status: str  # completed, early_stopped, diverged
    run_id: str | None  # None for a recorded run: its writer creates it


@dataclass(frozen=True)
class TrialPlan:
    """What a claimed trial will run: its config, its MLflow run's name and tags."""

    exp: Experiment
    run_name: str
    tags: dict[str, str]


def trial_setup(
    exp: Experiment, trial: optuna.Trial, storage: optuna.storages.BaseStorage
) -> TrialPlan:
    """A trial's config (sampled values, or the baseline's), MLflow tags and run name."""
    system = storage.get_trial_system_attrs(trial_id(storage, trial.study, trial.number))
    return trial_plan(exp, trial, system.get("failed_trial"))


def trial_plan(exp: Experiment, trial: BaseTrial, retry_of: int | None) -> TrialPlan:
    """The plan of a trial being run, or of a finished one (a FrozenTrial answers `suggest`
    with the values it took) whose lost run is made again from what Optuna holds."""
    is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    values = suggest(trial, exp.sweep.search)
    if is_baseline:
        values.update(all_regularizers_off())
    tags = {ROLE_TAG: "trial", STUDY_TAG: exp.name, TRIAL_TAG: str(trial.number)}
    if is_baseline:
        tags[BASELINE_TAG] = "true"
    if retry_of is not None:
        tags[RETRY_OF_TAG] = str(retry_of)
    exp = exp.with_values(values)
    what = f"Sweep trial {trial.number}" + (", the unregularized baseline," if is_baseline else "")
    tags[NOTE_TAG] = run_description(exp, what)
    return TrialPlan(exp, trial_run_name(trial.number, exp, is_baseline), tags)


def trial_epoch_callback(
    run: Run | RecordedRun,
    exp: Experiment,
    trial: optuna.Trial | None,
    progress: Progress | None,
    before_prune: Callable[[], None] | None = None,
) -> Callable[[int, dict[str, float]], None]:
    """Once per epoch: queue the metrics for MLflow, show progress, let Optuna prune.

    `before_prune`: called before the pruner judges (past its warm-up): a writer's outcomes
    still unwritten are told first, so the pruner sees the same finished trials whatever the
    writer's pace (by then they are long written: it costs nothing)."""
    pruner = exp.sweep.pruner

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        checkpoint()  # a stop signal noted during the epoch, raised between epochs
        run.log_epoch(epoch, metrics)
        if progress is not None:
            progress.epoch(epoch, exp.train.max_epochs)
        if trial is not None:
            trial.report(metrics["val/loss"], epoch)
            if before_prune is not None and pruner.enabled and epoch >= pruner.warmup_epochs:
                before_prune()
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {epoch}: val/loss {metrics['val/loss']:.4f}"
                )

    return on_epoch


def run_trial(
    exp: Experiment,
    splits: Splits,
    tracker: Tracker | Recorder,
    *,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None = None,
    trial: optuna.Trial | None = None,
    progress: Progress | None = None,
    speed: Speed = DEFAULT_SPEED,
    test_curve: bool = False,
    prune_evaluate: bool = False,
    before_prune: Callable[[], None] | None = None,
    link: Callable[[str], None] | None = None,
) -> TrialOutcome:
    """Train one configuration and record it as one MLflow run.

    With an Optuna `trial`, per-epoch validation loss is reported for pruning; a pruned trial
    raises `optuna.TrialPruned` after its run is closed. With a `Recorder` for the tracker the
    run is recorded for a writer (writer.py) instead of written: its closing piece is left in
    the recorded run's `final`. `test_curve` (ablation arms): the run
    also gets per-epoch `test/loss` and `test/acc`, logged once training has ended.
    `prune_evaluate` (ablation arms, `studylib train`): the kept weights' prune-and-evaluate
    figures, which the report's pruning table reads; sweep and tuning trials leave them out.
    `link(run_id)` without a `trial`: where the run's id is kept (an ablation unit's trial, so
    that a dead worker's run is closed with it).
    """
    device = splits.x_train.device
    torch.manual_seed(exp.seed)  # init and dropout masks
    model = build_model(
        exp.model, splits.input_shape, splits.num_classes, splits.vocab_size, splits.shared_vocab
    )
    model = model.to(device)
    parameters = sum(p.numel() for p in model.parameters())
    run = start_trial_run(
        exp,
        tracker,
        run_name,
        tags,
        parent_id,
        speed,
        parameters,
        device,
        trial.params if trial is not None else None,
        link=(lambda run_id: trial.set_user_attr(RUN_ID_ATTR, run_id)) if trial else link,
    )
    on_epoch = trial_epoch_callback(run, exp, trial, progress, before_prune)
    try:
        result = fit(
            model,
            splits,
            exp.train,
            exp.seed,
            on_epoch=on_epoch,
            speed=speed,
            test_curve=test_curve,
            prune_evaluate=prune_evaluate,
        )
    except TrackingUnavailable:
        raise  # nothing more can be written; the sweep closes the Optuna trial
    except BaseException as exc:
        close_interrupted_run(run, exc)
        raise
    close_trial_run(run, exp, result, splits.data_metrics)
    return TrialOutcome(result, result.status, run.run_id)
