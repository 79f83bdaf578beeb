"""Sweep: an Optuna study over the regularizers, every trial a child run in MLflow.

The search space is `suggest` below; the objective is the validation loss of the weights a
trial keeps (the best epoch's with early stopping, the last epoch's without). Trial 0 is the
unregularized baseline. The study lives in Optuna storage and resumes: a second `sweep` adds
trials until the requested total is reached.

Any number of `sweep` processes may work on one study, on one machine (journal file) or many
(PostgreSQL). Each trial is claimed under the study's lock (`studylib.locks`): count, then ask,
so the study ends with exactly the requested number of trials. Before each claim, trials of dead
workers are failed and queued again with the same parameters (`studylib.recovery`). SIGINT and
SIGTERM close the current trial in both systems (FAIL in Optuna, KILLED in MLflow) and stop.
`--workers N` starts N - 1 more such processes on this machine (studylib/workers.py);
`--population P` trains P claimed trials at once as one batched model (studylib/population.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import ExperimentalWarning
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
from studylib.locks import exclusive
from studylib.models import build_model
from studylib.recovery import (
    BASELINE_ATTR,
    CONFIG_ATTR,
    FAILURE_ATTR,
    MAX_RETRIES,
    OWNER_ATTR,
    REASON_ATTR,
    RUN_ID_ATTR,
    Worker,
    audit_records,
    check_same_settings,
    close_dead_sweeps,
    fail_dead_trials,
    queue_retries,
    same_settings,
    study_settings,
)
from studylib.redact import redact
from studylib.tracking import (
    GROUP_TAG,
    REASON_TAG,
    ROLE_TAG,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    Run,
    Tracker,
    TrackingUnavailable,
    environment_tags,
)
from studylib.train import TrainResult, fit, resolve_device

DIVERGED_ATTR = "diverged"
# Finished trials that count toward the requested total. A FAIL without the diverged mark
# (a crash, a killed worker) does not count, so a resumed sweep runs it again.
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_SECONDS = 60  # RDB storage: a worker's trial is stale after 3 missed heartbeats
POLL_SECONDS = 1.0  # how often a worker with nothing to claim looks at the others' trials


def make_storage(
    url_or_path: str, heartbeat_seconds: int = HEARTBEAT_SECONDS
) -> optuna.storages.BaseStorage:
    """A database URL gives Optuna's RDB storage; anything else is a journal file path.

    On a database every trial sends a heartbeat; one silent for 3 intervals is failed by the
    next worker that looks, and queued again with the same parameters.
    """
    if "://" in url_or_path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url_or_path,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_seconds,
                grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES
                ),
            )
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


def say(message: str) -> None:
    """A line on stderr that does not tear the progress bar."""
    tqdm.write(f"studylib: {redact(message)}", file=sys.stderr)


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
    shape, classes, vocab = splits.input_shape, splits.num_classes, splits.vocab_size
    model = build_model(exp.model, shape, classes, vocab).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    run = start_trial_run(exp, tracker, run_name, tags, parent_id, speed, parameters, device, trial)
    on_epoch = trial_epoch_callback(run, exp, trial, progress)
    try:
        result = fit(model, splits, exp.train, exp.seed, on_epoch=on_epoch, speed=speed)
    except TrackingUnavailable:
        raise  # nothing more can be written; the sweep closes the Optuna trial
    except BaseException as exc:
        close_interrupted_run(run, exc)
        raise
    return close_trial_run(run, exp, result, splits.data_metrics)


def start_trial_run(
    exp: Experiment,
    tracker: Tracker,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None,
    speed: Speed,
    parameters: int,
    device: torch.device,
    trial: optuna.Trial | None = None,
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
            **group_tags(exp),
        },
        parent_id=parent_id,
    )
    if trial is not None:  # linked now, so a worker that dies mid-trial leaves a trace
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
    params: dict[str, Any] = {**exp.flat(), "model.parameters": parameters}
    if (
        trial is not None
    ):  # Optuna's own parameters too (l1_on, ...): the report's fANOVA needs them
        params.update({f"optuna.{name}": value for name, value in trial.params.items()})
    run.log_params(params)  # one write (per 100 params): each MLflow call is a transaction
    return run


def trial_epoch_callback(
    run: Run, exp: Experiment, trial: optuna.Trial | None, progress: Progress | None
) -> Callable[[int, dict[str, float]], None]:
    """Once per epoch: queue the metrics for MLflow, show progress, let Optuna prune."""

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_epoch(epoch, metrics)
        if progress is not None:
            progress.epoch(epoch, exp.train.max_epochs)
        if trial is not None:
            trial.report(metrics["val/loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {epoch}: val/loss {metrics['val/loss']:.4f}"
                )

    return on_epoch


def close_trial_run(
    run: Run, exp: Experiment, result: TrainResult, data_metrics: dict[str, float] | None = None
) -> TrialOutcome:
    """Record how a trial ended: curve, final metrics, config and weights; FAILED if diverged.

    The closing tags, final metrics and the rest of the curve go out in one batch."""
    if result.status == "diverged" and result.history:
        run.log_epoch(len(result.history), result.history[-1])  # the finite part of that epoch
    closing = {STATUS_TAG: result.status, REASON_TAG: result.reason}
    if result.status == "diverged":
        run.closing(tags=closing)
        run.finish("FAILED")
        return TrialOutcome(result, result.status, run.run_id)
    run.log_files(
        json_files={"config.json": exp.model_dump(mode="json")},
        state_dicts={"model.pt": result.state_dict} if result.state_dict is not None else None,
    )
    # data_metrics: OOV rates (text)
    run.closing(tags=closing, metrics={**result.final, **(data_metrics or {})})
    run.finish("FINISHED")
    return TrialOutcome(result, result.status, run.run_id)


def close_interrupted_run(run: Run, exc: BaseException) -> None:
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


def group_tags(exp: Experiment) -> dict[str, str]:
    return {GROUP_TAG: exp.group} if exp.group else {}


def open_tracker(exp: Experiment, settings: Settings) -> Tracker:
    """The study's MLflow experiment; a group member's experiment is tagged with its group."""
    tracker = Tracker(
        settings.tracking_uri, exp.name, settings.artifact_root, settings.tracking_retry_seconds
    )
    if exp.group:
        tracker.client.set_experiment_tag(tracker.experiment_id, GROUP_TAG, exp.group)
    return tracker


class Progress:
    """Trials done of total, best value so far, and the current trial's epoch."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = tqdm(total=total, initial=done, unit="trial", disable=not enabled, leave=True)
        self.best = math.inf
        self._trial: int | str = -1
        self._shown = 0.0

    def start_trial(self, number: int | str) -> None:
        self._trial = number

    def epoch(self, epoch: int, max_epochs: int) -> None:
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            best = f"{self.best:.4f}" if math.isfinite(self.best) else "-"
            self.bar.set_postfix_str(
                f"best val/loss {best} | trial {self._trial} epoch {epoch}/{max_epochs}"
            )

    def sync(self, done: int) -> None:
        """Show trials finished by every worker of the study, not only this one."""
        if done != self.bar.n:
            self.bar.n = done
            self.bar.refresh()

    def finish_trial(self, value: float | None) -> None:
        if value is not None and value < self.best:
            self.best = value
        if self.bar.total is None or self.bar.n < self.bar.total:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the current trial is closed in Optuna and MLflow, then the sweep stops."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class SweepSummary:
    study_name: str
    parent_run_id: str
    trials_done: int
    trials_run: int  # by this process
    best_value: float | None
    best_trial: int | None
    seconds: float


def _counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(
        1
        for t in trials
        if t.state in DONE_STATES
        or (t.state == TrialState.FAIL and t.user_attrs.get(DIVERGED_ATTR))
    )


def counted_trials(study: optuna.Study) -> int:
    return _counted(study.get_trials(deepcopy=False))


def _pruner(exp: Experiment) -> optuna.pruners.BasePruner:
    if not exp.sweep.pruner.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=exp.sweep.pruner.startup_trials,
        n_warmup_steps=exp.sweep.pruner.warmup_epochs,
    )


def open_study(
    exp: Experiment,
    settings: Settings,
    *,
    new_study: bool = False,
    storage: optuna.storages.BaseStorage | None = None,
) -> optuna.Study:
    """Create or resume the study `exp.name`; refuse one created with other settings.

    A new study stores its settings and queues the baseline, under the study's lock, so
    workers starting together do it once. With `new_study`, a study of the same name but other
    settings is left alone and the first free (or matching) `<name>-v2`, `-v3`, ... is used.
    """
    storage = storage or make_storage(settings.storage, settings.heartbeat_seconds)
    names = [exp.name] + [f"{exp.name}-v{k}" for k in range(2, 100)]
    for name in names:
        with exclusive(settings.storage, f"study:{name}"):
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                direction="minimize",
                pruner=_pruner(exp),
                load_if_exists=True,
            )
            if CONFIG_ATTR not in study.user_attrs:
                if study.trials:
                    say(f"study {name} predates stored settings: it adopts the current ones")
                elif exp.sweep.baseline:
                    study.enqueue_trial(baseline_params(exp), user_attrs={BASELINE_ATTR: True})
                study.set_user_attr(CONFIG_ATTR, study_settings(exp))
            elif new_study and not same_settings(study, exp):
                continue
            check_same_settings(study, exp, redact(settings.storage))
        if name != exp.name:
            say(f"study {exp.name} holds other settings: this sweep uses study {name}")
        return study
    raise ConfigError(f"--new-study: {exp.name}-v2 to -v99 all hold other settings")


def _heartbeat_seconds(storage: optuna.storages.BaseStorage) -> int | None:
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage.get_heartbeat_interval()
    return None


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every interval while it runs (RDB storage only).

    Optuna runs this thread inside `study.optimize`; the sweep claims trials with ask/tell
    (to count and ask under one lock), so it runs it here.
    """
    interval = _heartbeat_seconds(storage)
    if not interval:
        yield
        return
    assert isinstance(storage, optuna.storages.RDBStorage)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as exc:  # a database hiccup: the next beat may pass
                say(f"trial {trial.number}: heartbeat not recorded: {exc}")
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def claim_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    exp: Experiment,
    total: int,
    settings: Settings,
    tracker: Tracker,
) -> tuple[optuna.Trial | None, bool]:
    """(trial, False) to run; (None, True) to wait for trials running elsewhere; (None, False)
    when the study is complete or what remains belongs to workers we cannot judge."""
    heartbeat_on = _heartbeat_seconds(storage) is not None
    with exclusive(settings.storage, f"study:{study.study_name}"):
        for note in fail_dead_trials(study, tracker, heartbeat_on) + queue_retries(study):
            say(note)
        trials = study.get_trials(deepcopy=False)
        done = _counted(trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done >= total:
            return None, False
        if done + len(running) >= total:
            # The last trials run in other workers; one may yet fail and need a retry.
            owners = [Worker.from_attr(t.user_attrs.get(OWNER_ATTR)) for t in running]
            judged = heartbeat_on or any(o is None or o.on_this_machine() for o in owners)
            return None, judged
        # Seeded by trial number: reproducible alone, and workers never share a sample.
        study.sampler = optuna.samplers.TPESampler(seed=exp.seed + len(trials))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr(OWNER_ATTR, Worker.current().as_attr())
        if trial.user_attrs.get(RUN_ID_ATTR) is not None:  # inherited from a retried trial
            trial.set_user_attr(RUN_ID_ATTR, None)
        return trial, False


def _close_trial(study: optuna.Study, trial: optuna.Trial, failure: str, reason: str) -> None:
    """Mark the trial FAIL with why; never mask the exception that brought us here."""
    try:
        trial.set_user_attr(FAILURE_ATTR, failure)
        trial.set_user_attr(REASON_ATTR, redact(reason)[:500])
        study.tell(trial, state=TrialState.FAIL)
    except Exception as exc:
        say(f"trial {trial.number} could not be marked FAIL ({exc}); the next sweep will")


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
    retried = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    if retried is not None:
        tags["studylib.retry_of"] = str(retried)
    name = f"trial-{trial.number:04d}" + ("-baseline" if is_baseline else "")
    return cfg, tags, name


def record_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> float | None:
    """Tell Optuna how a trained trial ended; its value, None if it diverged (a counted FAIL)."""
    assert outcome.result is not None
    if outcome.status == "diverged":
        trial.set_user_attr(DIVERGED_ATTR, outcome.result.reason)
        trial.set_user_attr(FAILURE_ATTR, "diverged")
        study.tell(trial, state=TrialState.FAIL)
        return None
    value = outcome.result.final["selected_val_loss"]
    for key in ("best_epoch", "stopped_epoch", "test_acc", "selected_val_acc"):
        trial.set_user_attr(key, outcome.result.final[key])
    study.tell(trial, value)
    return value


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
    parent_id: str  # the sweep's MLflow parent run
    progress: Progress
    tally: Tally


def claim_loop(share: Share, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Claim a trial, run it, tell Optuna; until the study holds `total` counted trials."""
    exp, settings, study, storage = share.exp, share.settings, share.study, share.storage
    tracker, splits, total, progress, tally = (
        share.tracker,
        share.splits,
        share.total,
        share.progress,
        share.tally,
    )

    def evaluate(trial: optuna.Trial) -> None:
        progress.start_trial(trial.number)
        cfg, tags, name = trial_setup(exp, trial)
        try:
            with heartbeat(storage, trial):
                outcome = run_trial(
                    cfg,
                    splits,
                    tracker,
                    run_name=name,
                    tags=tags,
                    parent_id=share.parent_id,
                    trial=trial,
                    progress=progress,
                    speed=settings.speed,
                )
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            tally.ran += 1
            progress.finish_trial(None)
            return
        except TrackingUnavailable as exc:
            _close_trial(study, trial, "tracking", str(exc))
            raise TrackingUnavailable(
                f"{exc}. Optuna is consistent: trial {trial.number} is marked FAIL and runs "
                "again when you rerun the sweep with the server back"
            ) from None
        except KeyboardInterrupt as stop:
            _close_trial(study, trial, "interrupted", f"interrupted by {stop or 'SIGINT'}")
            raise
        except BaseException as exc:
            _close_trial(study, trial, "crashed", f"{type(exc).__name__}: {exc}")
            raise
        tally.ran += 1
        progress.finish_trial(record_outcome(study, trial, outcome))

    while not should_stop():
        trial, wait = claim_trial(study, storage, exp, total, settings, tracker)
        progress.sync(min(counted_trials(study), total))
        if trial is not None:
            evaluate(trial)
        elif wait:
            time.sleep(POLL_SECONDS)
        else:
            break


def trial_loop(
    share: Share, population: int, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """One process's share of the study: trials one at a time, or `population` at a time."""
    if population > 1:
        from studylib.population import run_population

        run_population(share, population, should_stop)
    else:
        claim_loop(share, should_stop)


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

    With `workers` > 1 the trials run in that many processes (studylib/workers.py); with
    `population` > 1 that many trials train at once as one batched model (population.py).
    """
    started = time.monotonic()
    check_speedups(exp, settings, workers, population)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = trials if trials is not None else exp.sweep.trials
    with stop_on_signals():
        # Optuna creates its tables in a fresh database without a lock; workers doing so at
        # once on PostgreSQL fail ("duplicate key ... pg_type"): serialize the first open.
        with exclusive(settings.storage, "optuna-init"):
            storage = make_storage(settings.storage, settings.heartbeat_seconds)
        study = open_study(exp, settings, new_study=new_study, storage=storage)
        if study.study_name != exp.name:
            exp = exp.with_values({"name": study.study_name})
        device = resolve_device(settings.device)
        splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(device)
        tracker = open_tracker(exp, settings)
        for note in close_dead_sweeps(tracker):
            say(note)
        lacking = audit_records(study, tracker)
        if lacking:
            say(f"trials lacking complete MLflow records: {', '.join(lacking)}")
        return _sweep(
            exp, settings, study, storage, tracker, splits, total, started, workers, population
        )


def check_speedups(exp: Experiment, settings: Settings, workers: int, population: int) -> None:
    """Bad --workers / --population settings as one ConfigError, before anything runs."""
    if workers > 1:
        from studylib.workers import check_workers

        check_workers(workers, settings.storage)
    if population > 1:
        from studylib.population import check_population_search

        check_population_search(exp)


def _sweep(
    exp, settings, study, storage, tracker, splits, total, started, workers=1, population=1
) -> SweepSummary:
    done = counted_trials(study)
    parent = tracker.start_run(
        f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            ROLE_TAG: "sweep",
            STUDY_TAG: exp.name,
            "studylib.storage": redact(settings.storage),
            OWNER_ATTR: json.dumps(Worker.current().as_attr()),
            **environment_tags(),
            **group_tags(exp),
        },
    )
    parent.log_params(exp.flat())
    progress = Progress(total, min(done, total), settings.progress)
    if study.best_trials:
        progress.best = study.best_value
    tally = Tally()
    status = "FINISHED"
    try:
        share = Share(
            exp, settings, study, storage, tracker, splits, total, parent.run_id, progress, tally
        )
        if workers > 1:  # N processes on this machine, this one among them: workers.py
            from studylib.workers import run_workers

            run_workers(share, workers, population)
        else:  # one process: trials one at a time, or P at a time as one batched model
            trial_loop(share, population)
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
            trials_run=tally.ran,
            best_value=study.best_value if finished else None,
            best_trial=study.best_trial.number if finished else None,
            seconds=time.monotonic() - started,
        )
        if tracker.down is None:
            parent.log_metrics(
                {"trials_done": summary.trials_done, "trials_run": summary.trials_run}
            )
            if summary.best_value is not None:
                parent.log_metrics({"best_value": summary.best_value})
                parent.set_tags({"studylib.best_trial": summary.best_trial})
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
    with stop_on_signals():
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
        )
