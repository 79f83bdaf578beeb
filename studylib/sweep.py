"""Sweep: an Optuna study over the regularizers, every trial a child run in MLflow.

The search space is `suggest` below; the objective is the validation loss of the weights a
trial keeps (the best epoch's with early stopping, the last epoch's without). Trial 0 is the
unregularized baseline. The study lives in Optuna storage and resumes: a second `sweep` adds
trials until the requested total is reached.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState
from tqdm import tqdm

from studylib.config import (
    DEFAULT_SPEED,
    REGULARIZER_OFF,
    SEARCHABLE,
    ConfigError,
    Experiment,
    SearchRange,
    Settings,
    Speed,
)
from studylib.data import Splits, load_splits
from studylib.models import build_model
from studylib.tracking import (
    REASON_TAG,
    ROLE_TAG,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    Run,
    Tracker,
    environment_tags,
)
from studylib.train import TrainResult, fit, resolve_device

BASELINE_ATTR = "baseline"
DIVERGED_ATTR = "diverged"
# Finished trials that count toward the requested total. A FAIL without the diverged mark
# (a crash, a killed worker) does not count, so a resumed sweep runs it again.
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def make_storage(url_or_path: str) -> optuna.storages.BaseStorage:
    """A database URL gives Optuna's RDB storage; anything else is a journal file path."""
    if "://" in url_or_path:
        return optuna.storages.RDBStorage(url_or_path)
    return optuna.storages.JournalStorage(JournalFile(url_or_path))


class JournalFile(JournalFileBackend):
    """Optuna's journal file, each record appended under its lock but without an fsync.

    A trial writes about ten records (its creation, each parameter, its attributes, its end);
    Optuna fsyncs every one, 4 ms each on the disk `make bench` measured: 40 ms a trial, most
    of studylib's overhead per trial. Without the fsync, a record is in the operating
    system's cache when the write returns: a killed process loses nothing; a power cut may
    lose the last records, never corrupt the file (a torn last line is skipped on reading).
    The same guarantee as SQLite's WAL + synchronous=NORMAL used for MLflow (tracking.py).
    """

    def __init__(self, path: str):
        self._path = path
        self._write_lock = JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self._write_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._write_lock.acquire()
        try:
            with open(self._path, "ab") as file:
                file.write(text.encode("utf-8"))
        finally:
            self._write_lock.release()


def suggest(trial: optuna.Trial, search: dict[str, SearchRange]) -> dict[str, Any]:
    """Config values for one trial: `{"model.dropout": 0.2, "train.l1": 0.0, ...}`."""
    values: dict[str, Any] = {}
    for name, rng in search.items():
        if name == "patience":
            value: Any = trial.suggest_int(name, int(rng.low), int(rng.high), log=rng.log)
        else:
            value = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
        # With allow_zero both params are always suggested, so importance sees both.
        if rng.allow_zero and not trial.suggest_categorical(f"{name}_on", [True, False]):
            value = REGULARIZER_OFF[name]
        values[SEARCHABLE[name]] = value
    return values


def baseline_params(exp: Experiment) -> dict[str, Any]:
    """Optuna params that make trial 0 the unregularized baseline."""
    params: dict[str, Any] = {}
    for name, rng in exp.sweep.search.items():
        if name in REGULARIZER_OFF:
            if rng.allow_zero:
                params[f"{name}_on"] = False
                params[name] = rng.low
            else:
                params[name] = max(rng.low, REGULARIZER_OFF[name])
        elif name == "patience":
            params[name] = int(rng.high)  # unused: the baseline trains without early stopping
        else:  # a nuisance hyperparameter: the experiment's fixed value, kept inside the range
            current = float(_get(exp, SEARCHABLE[name]))
            params[name] = min(max(current, rng.low), rng.high)
    return params


def baseline_values(exp: Experiment) -> dict[str, Any]:
    """Config values of the baseline: every regularizer off, no early stopping."""
    values: dict[str, Any] = {SEARCHABLE[name]: off for name, off in REGULARIZER_OFF.items()}
    values["train.early_stopping"] = False
    return values


def _get(exp: Experiment, dotted: str) -> Any:
    node: Any = exp
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@dataclass
class TrialOutcome:
    result: TrainResult | None
    status: str  # completed, early_stopped, pruned, diverged
    run_id: str


def run_trial(
    exp: Experiment,
    splits: Splits,
    tracker: Tracker,
    *,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None = None,
    trial: optuna.Trial | None = None,
    progress: Progress | None = None,
    speed: Speed = DEFAULT_SPEED,
) -> TrialOutcome:
    """Train one configuration and record it as one MLflow run.

    With an Optuna `trial`, per-epoch validation loss is reported for pruning; a pruned trial
    raises `optuna.TrialPruned` after its run is closed.
    """
    device = splits.x_train.device
    torch.manual_seed(exp.seed)  # init and dropout masks
    model = build_model(exp.model, splits.input_shape, splits.num_classes).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    run = start_trial_run(exp, tracker, run_name, tags, parent_id, speed, parameters, device)
    on_epoch = trial_epoch_callback(run, exp, trial, progress)
    try:
        result = fit(model, splits, exp.train, exp.seed, on_epoch=on_epoch, speed=speed)
    except (Exception, KeyboardInterrupt) as exc:
        close_interrupted_run(run, exc)
        raise
    return close_trial_run(run, exp, result)


def start_trial_run(
    exp: Experiment,
    tracker: Tracker,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None,
    speed: Speed,
    parameters: int,
    device: torch.device,
) -> Run:
    """The MLflow run of one trial, with its tags and its full resolved config as params."""
    run = tracker.start_run(
        run_name,
        tags={
            **tags,
            **environment_tags(),
            "studylib.arch": exp.model.arch,
            "studylib.dataset": exp.data.name,
            "studylib.seed": str(exp.seed),
            "studylib.device": str(device),
            "studylib.precision": speed.precision,
            "studylib.compile": str(speed.compile),
        },
        parent_id=parent_id,
    )
    # One write for all params: each MLflow call is a database transaction.
    run.log_params({**exp.flat(), "model.parameters": parameters})
    return run


def trial_epoch_callback(
    run: Run, exp: Experiment, trial: optuna.Trial | None, progress: Progress | None
) -> Callable[[int, dict[str, float]], None]:
    """Once per epoch: queue the metrics for MLflow, show progress, let Optuna prune."""
    # Each report is a write to Optuna's storage: make it only when a pruner will read it.
    prunable = trial is not None and not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_epoch(epoch, metrics)
        if progress is not None:
            progress.epoch(epoch, exp.train.max_epochs)
        if prunable:
            trial.report(metrics["val/loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {epoch}: val/loss {metrics['val/loss']:.4f}"
                )

    return on_epoch


def close_trial_run(run: Run, exp: Experiment, result: TrainResult) -> TrialOutcome:
    """Record how a trial ended: curve, final metrics, config and weights; FAILED if diverged."""
    if result.status == "diverged" and result.history:
        run.log_epoch(len(result.history), result.history[-1])  # the finite part of that epoch
    closing = {STATUS_TAG: result.status, REASON_TAG: result.reason}
    if result.status == "diverged":
        run.finish("FAILED", tags=closing)
        return TrialOutcome(result, result.status, run.run_id)
    run.log_files(
        json_files={"config.json": exp.model_dump(mode="json")},
        state_dicts={"model.pt": result.state_dict} if result.state_dict is not None else None,
    )
    run.finish("FINISHED", tags=closing, metrics=result.final)
    return TrialOutcome(result, result.status, run.run_id)


def close_interrupted_run(run: Run, exc: BaseException) -> None:
    """Close the run of a trial that training left by an exception: pruned, killed or crashed."""
    if isinstance(exc, optuna.TrialPruned):
        run.finish("FINISHED", tags={STATUS_TAG: "pruned", REASON_TAG: str(exc)})
    elif isinstance(exc, KeyboardInterrupt):
        run.finish("KILLED", tags={STATUS_TAG: "killed", REASON_TAG: "interrupted by the user"})
    else:
        reason = f"{type(exc).__name__}: {exc}"
        run.finish("FAILED", tags={STATUS_TAG: "crashed", REASON_TAG: reason})


class Progress:
    """Trials done of total, best value so far, and the current trial's epoch."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = tqdm(total=total, initial=done, unit="trial", disable=not enabled, leave=True)
        self.best = math.inf
        self._trial = -1
        self._shown = 0.0

    def start_trial(self, number: int) -> None:
        self._trial = number

    def epoch(self, epoch: int, max_epochs: int) -> None:
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            best = f"{self.best:.4f}" if math.isfinite(self.best) else "-"
            self.bar.set_postfix_str(
                f"best val/loss {best} | trial {self._trial} epoch {epoch}/{max_epochs}"
            )

    def finish_trial(self, value: float | None) -> None:
        if value is not None and value < self.best:
            self.best = value
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class SweepSummary:
    study_name: str
    parent_run_id: str
    trials_done: int
    trials_run: int
    best_value: float | None
    best_trial: int | None
    seconds: float


def counted_trials(study: optuna.Study) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in DONE_STATES
        or (t.state == TrialState.FAIL and t.user_attrs.get(DIVERGED_ATTR))
    )


def open_study(exp: Experiment, settings: Settings) -> optuna.Study:
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if exp.sweep.pruner.enabled:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=exp.sweep.pruner.startup_trials,
            n_warmup_steps=exp.sweep.pruner.warmup_epochs,
        )
    study = optuna.create_study(
        study_name=exp.name,
        storage=make_storage(settings.storage),
        direction="minimize",
        pruner=pruner,
        load_if_exists=True,
    )
    # A fixed seed would replay the same parameters after a resume: offset it by the trials
    # the study already holds, so a resumed sweep explores on and stays reproducible.
    study.sampler = optuna.samplers.TPESampler(seed=exp.seed + len(study.trials))
    return study


def run_sweep(
    exp: Experiment,
    settings: Settings,
    trials: int | None = None,
    workers: int = 1,
    population: int = 1,
) -> SweepSummary:
    """Run the study until it holds `trials` (default: the experiment's) counted trials.

    With `workers` > 1 the trials run in that many processes (studylib/workers.py); with
    `population` > 1 that many trials train at once as one batched model (population.py).
    """
    started = time.monotonic()
    check_speedups(exp, settings, workers, population)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = trials if trials is not None else exp.sweep.trials
    device = resolve_device(settings.device)
    splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(device)
    study = open_study(exp, settings)
    tracker = Tracker(settings.tracking_uri, exp.name, settings.artifact_root)

    if exp.sweep.baseline and not study.trials:
        study.enqueue_trial(baseline_params(exp), user_attrs={BASELINE_ATTR: True})

    done = counted_trials(study)
    parent = tracker.start_run(
        f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={ROLE_TAG: "sweep", STUDY_TAG: exp.name, **environment_tags()},
    )
    parent.log_params(exp.flat())
    progress = Progress(total, min(done, total), settings.progress)
    if study.best_trials:
        progress.best = study.best_value
    objective = trial_objective(exp, settings, splits, tracker, parent.run_id, progress)

    status = "FINISHED"
    try:
        if workers > 1:  # N processes on this machine: studylib/workers.py
            from studylib.workers import run_workers

            run_workers(exp, settings, study, total, parent.run_id, progress, workers, objective)
        elif population > 1:  # P trials as one batched model: studylib/population.py
            from studylib.population import run_population

            run_population(
                exp, settings, study, total, parent.run_id, progress, population, splits, tracker
            )
        else:
            while counted_trials(study) < total:
                study.optimize(objective, n_trials=total - counted_trials(study))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        progress.close()
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        summary = SweepSummary(
            study_name=exp.name,
            parent_run_id=parent.run_id,
            trials_done=counted_trials(study),
            trials_run=counted_trials(study) - done,
            best_value=study.best_value if finished else None,
            best_trial=study.best_trial.number if finished else None,
            seconds=time.monotonic() - started,
        )
        parent.log_metrics({"trials_done": summary.trials_done, "trials_run": summary.trials_run})
        if summary.best_value is not None:
            parent.log_metrics({"best_value": summary.best_value})
            parent.set_tags({"studylib.best_trial": summary.best_trial})
        parent.finish(status)
    return summary


def check_speedups(exp: Experiment, settings: Settings, workers: int, population: int) -> None:
    """Bad --workers / --population settings as one ConfigError, before anything runs."""
    if workers > 1 and population > 1:
        raise ConfigError("--workers and --population: use one or the other")
    if workers > 1:
        from studylib.workers import check_workers

        check_workers(workers, settings.storage)
    if population > 1:
        from studylib.population import check_population_search

        check_population_search(exp)


def trial_objective(
    exp: Experiment,
    settings: Settings,
    splits: Splits,
    tracker: Tracker,
    parent_id: str,
    progress: Progress,
) -> Callable[[optuna.Trial], float]:
    """The sweep's Optuna objective: each trial one MLflow child run under `parent_id`."""

    def objective(trial: optuna.Trial) -> float:
        progress.start_trial(trial.number)
        cfg, tags, name = trial_setup(exp, trial)
        try:
            outcome = run_trial(
                cfg,
                splits,
                tracker,
                run_name=name,
                tags=tags,
                parent_id=parent_id,
                trial=trial,
                progress=progress,
                speed=settings.speed,
            )
        except optuna.TrialPruned:
            progress.finish_trial(None)
            raise
        value = record_outcome(trial, outcome)
        progress.finish_trial(None if math.isnan(value) else value)
        return value

    return objective


def trial_setup(exp: Experiment, trial: optuna.Trial) -> tuple[Experiment, dict[str, str], str]:
    """A trial's config (sampled values, or the baseline's), MLflow tags and run name."""
    is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    values = suggest(trial, exp.sweep.search)
    if is_baseline:
        values.update(baseline_values(exp))
    cfg = exp.with_values(values)
    tags = {ROLE_TAG: "trial", STUDY_TAG: exp.name, TRIAL_TAG: str(trial.number)}
    if is_baseline:
        tags["studylib.baseline"] = "true"
    name = f"trial-{trial.number:04d}" + ("-baseline" if is_baseline else "")
    return cfg, tags, name


def record_outcome(trial: optuna.Trial, outcome: TrialOutcome) -> float:
    """Store a finished trial's MLflow run id and figures on it; return its objective value.

    NaN for a diverged trial: Optuna records a NaN objective as a failed trial.
    """
    trial.set_user_attr("mlflow_run_id", outcome.run_id)
    assert outcome.result is not None
    if outcome.status == "diverged":
        trial.set_user_attr(DIVERGED_ATTR, outcome.result.reason)
        return math.nan
    for key in ("best_epoch", "stopped_epoch", "test_acc", "selected_val_acc"):
        trial.set_user_attr(key, outcome.result.final[key])
    return outcome.result.final["selected_val_loss"]


def run_single(exp: Experiment, settings: Settings) -> TrialOutcome:
    """`studylib train`: one run with the experiment's fixed values, logged like a trial."""
    device = resolve_device(settings.device)
    splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(device)
    tracker = Tracker(settings.tracking_uri, exp.name, settings.artifact_root)
    return run_trial(
        exp,
        splits,
        tracker,
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={ROLE_TAG: "train", STUDY_TAG: exp.name},
        speed=settings.speed,
    )
