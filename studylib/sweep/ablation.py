"""Ablation: the unregularized baseline, each regularizer alone, and all of them, over seeds.

A sweep finds good settings; an ablation explains what each regularizer does. Following the
tuning playbook, the experiment file labels its hyperparameters: the regularizer strengths are
*scientific* (`[ablation.strength]`, each given or tuned), `[ablation.nuisance]` ranges are
*nuisance* (tuned per arm, so no arm loses for want of a good learning rate), everything else is
*fixed*. Tuning looks at validation loss on the tuning seed (`[ablation] tuning_seed`: its own
split, init and batch order, never an evaluation seed, so no arm run repeats a tuning trial and
no arm's figures are a best-of-N); every arm then runs once per evaluation seed, and the seed
fixes split, init and dropout masks, so arms compare paired by seed.

Arms: `baseline` (no dropout, no penalty, no decay, no early stopping), `dropout`, `l1`, `l2`,
`weight_decay`, `early_stopping` (watching validation loss), `early_stopping_error` (watching
validation error, 1 - accuracy) (each alone), and `all` (every regularizer, plus early stopping
on the experiment's `train.monitor`). `all` tunes its strengths jointly, with the single arms'
budget for each knob it tunes (`tune_trials` x knobs): reusing the strengths each arm settled on
alone stacks four regularizers each tuned to its own best, and over-regularizes (measured in the
default study: test accuracy 0.30 against the baseline's 0.48). Arms without early stopping keep
their last epoch's weights.

Patience is given in advance (`[ablation.strength] patience`), never tuned: on the tuning seed's
validation loss a longer patience can only keep an epoch as good or better (it sees a longer
stretch of the same curve), so tuning it would pick the top of its range every time.

With `[ablation] test_curves`, arm runs (not tuning runs) also log `test/loss` and `test/acc`
per epoch, computed into a buffer that training reads only after it ends (train/loop.py).

Every process runs an ablation the way it runs a sweep: its units of work are trials of a
ledger study (`<name>.ablation`; `<name>.ablation-2`, -3 for the designs of an edited file, each
ledger naming its design key in a study attribute; arms tune in `<ledger>.<arm>`), queued with
fixed parameters and claimed through
the one claim protocol (claim.py, loops.trial_loop), so `--workers N` and any launcher spread
them over their workers, and a dead worker's unit is failed and run again by another. Two
kinds of unit: "tune arm A" (the arm's whole tuning study, run sequentially by the one worker
holding the arm's tuning lock, exactly as one process runs it, so TPE sees the same history and
settles on the same strengths whatever the worker count) and "run arm A on seed s" (one run
with the arm's tuned values; it takes the arm's tuning lock first, so it waits for the tuning
or, if the tuner died, resumes it). Tuning units come first in the queue, the runs after them,
seed by seed, so several workers tune several arms at once. Each unit is idempotent: a tuning
study stops at its budget, and an (arm, seed) with a finished MLflow run is not run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studylib.config import (
    ARM_KNOBS,
    ARM_MONITOR,
    SEARCHABLE,
    Experiment,
    SearchRange,
    Settings,
    all_regularizers_off,
)
from studylib.console import Progress, say
from studylib.data import Splits, load_splits
from studylib.errors import Incomplete, checkpoint, stop_on_signals
from studylib.locks import exclusive
from studylib.names import (
    ARM_TAG,
    DESIGN_ATTR,
    FAILURE_ATTR,
    KEY_TAG,
    OWNER_ATTR,
    REASON_ATTR,
    REASON_TAG,
    ROLE_TAG,
    RUN_ID_ATTR,
    SEED_TAG,
    STATUS_TAG,
    STRENGTHS_TAG,
    STUDY_TAG,
    TUNING_SEED_TAG,
)
from studylib.sweep.loops import Share, Tally, open_storage, trial_loop
from studylib.sweep.recovery import Worker, close_dead_sweeps, queue_retries
from studylib.sweep.space import suggest, switched_on
from studylib.sweep.study import count_done, counted_trials, sampler_for, study_exists, trial_id
from studylib.sweep.trial import run_trial
from studylib.sweep.workers import run_workers
from studylib.tracking import (
    Recorder,
    Run,
    Tracker,
    applicable_params,
    environment_tags,
    group_tags,
    open_tracker,
)
from studylib.train import TrainResult, resolve_device

KNOB_OF_PATH = {path: name for name, path in SEARCHABLE.items()}


def arm_knobs(arm: str) -> tuple[str, ...]:
    if arm == "all":  # every knob once (both early-stopping arms turn patience)
        return tuple(dict.fromkeys(knob for knobs in ARM_KNOBS.values() for knob in knobs))
    return ARM_KNOBS.get(arm, ())


def arm_values(arm: str, strengths: dict[str, Any]) -> dict[str, Any]:
    """Config values of one arm, given each knob's strength."""
    values: dict[str, Any] = all_regularizers_off()
    for knob in arm_knobs(arm):
        values[SEARCHABLE[knob]] = strengths[knob]
        if knob == "patience":
            values["train.early_stopping"] = True
    if arm in ARM_MONITOR:
        values["train.monitor"] = ARM_MONITOR[arm]
    return values


def ablation_key(exp: Experiment) -> str:
    """Identifies the design: runs of an edited experiment are never mistaken for these."""
    design = exp.model_dump(mode="json", exclude={"sweep": {"trials"}})
    return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class AblationSummary:
    parent_run_id: str
    runs_done: int
    runs_skipped: int
    strengths: dict[str, dict[str, Any]]  # arm -> knob -> strength
    nuisance: dict[str, dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class Tuning:
    """What an arm tunes: its search space (untuned strengths and nuisance), and its budget."""

    space: dict[str, SearchRange]
    untuned: list[str]
    budget: int


def arm_tuning(exp: Experiment, arm: str) -> Tuning:
    assert exp.ablation is not None
    plan = exp.ablation
    given = given_strengths(exp)
    untuned = [k for k in arm_knobs(arm) if k not in given]
    space = {k: switched_on(exp.sweep.search[k]) for k in untuned}
    space.update(plan.nuisance)
    knobs = 1 if plan.tune_budget == "per_arm" else max(1, len(untuned))
    return Tuning(space, untuned, plan.tune_trials * knobs)


def given_strengths(exp: Experiment) -> dict[str, Any]:
    assert exp.ablation is not None
    return {k: v for k, v in exp.ablation.strength.model_dump().items() if v is not None}


@dataclass(frozen=True)
class Step:
    """One unit of an ablation's work: tune `arm` (seed None), or run it on `seed`."""

    arm: str
    seed: int | None = None

    def __str__(self) -> str:
        return f"tune {self.arm}" if self.seed is None else f"{self.arm}/seed {self.seed}"


def ablation_steps(exp: Experiment) -> list[Step]:
    """Every unit, in the order workers take them: the tunings first (several arms tune at
    once), then the runs seed by seed (an arm's runs spread over workers, its tuning done)."""
    assert exp.ablation is not None
    plan = exp.ablation
    tunes = [Step(arm) for arm in plan.arms if arm_tuning(exp, arm).space]
    return tunes + [Step(arm, seed) for seed in plan.seeds for arm in plan.arms]


STEP_PARAM = "step"  # a unit's index in ablation_steps, its trial's one parameter


def legacy_ledger_name(exp: Experiment) -> str:
    """The name studylib gave a design's ledger before names were readable (still resumed)."""
    return f"{exp.name}.ablation.{ablation_key(exp)}"


def ledger_name(exp: Experiment, storage: optuna.storages.BaseStorage) -> str | None:
    """The ledger study that holds this design, if there is one: `<name>.ablation` for an
    experiment's first design, `<name>.ablation-2`, -3, ... for the designs of an edited file
    (each ledger names its design in a study attribute)."""
    key = ablation_key(exp)
    taken = {s.study_name: s.user_attrs.get(DESIGN_ATTR) for s in storage.get_all_studies()}
    for name in readable_ledger_names(exp, len(taken) + 1):
        if taken.get(name) == key:
            return name
    legacy = legacy_ledger_name(exp)
    return legacy if legacy in taken else None


def new_ledger_name(exp: Experiment, storage: optuna.storages.BaseStorage) -> str:
    """The first readable ledger name no study has taken (the caller holds ledger_lock)."""
    taken = {s.study_name for s in storage.get_all_studies()}
    return next(n for n in readable_ledger_names(exp, len(taken) + 1) if n not in taken)


def readable_ledger_names(exp: Experiment, count: int) -> list[str]:
    base = f"{exp.name}.ablation"
    return [base] + [f"{base}-{number}" for number in range(2, count + 1)]


def ledger_lock(exp: Experiment) -> str:
    """Naming and opening a ledger, and closing the ablation, happen under this lock."""
    return f"ablation:{exp.name}"


def tuning_name(ledger: str, exp: Experiment, arm: str) -> str:
    """An arm's tuning study: `<ledger>.<arm>` (`default.ablation.dropout`)."""
    if ledger == legacy_ledger_name(exp):
        return f"{exp.name}.ablation.{arm}.{ablation_key(exp)}"
    return f"{ledger}.{arm}"


def step_of(trial: FrozenTrial) -> int | None:
    """The unit a ledger trial holds: asked (its parameter) or queued (its fixed parameter)."""
    if STEP_PARAM in trial.params:
        return int(trial.params[STEP_PARAM])
    fixed = trial.system_attrs.get("fixed_params") or {}
    return int(fixed[STEP_PARAM]) if STEP_PARAM in fixed else None


def missing_steps(trials: list[FrozenTrial], count: int, but: int | None = None) -> list[int]:
    """Units with no trial that holds them: counted, running or queued (`but` aside)."""
    held = {
        step_of(t)
        for t in trials
        if t.number != but
        and (t.state in (TrialState.RUNNING, TrialState.WAITING) or count_done([t]))
    }
    return [index for index in range(count) if index not in held]


def open_ledger(
    exp: Experiment, settings: Settings, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """The ledger of the ablation's units, created or resumed, every unit without a trial that
    holds it queued (once, under the ledger's lock: by whichever process opens it first)."""
    with exclusive(settings.storage, ledger_lock(exp)):
        how = {"pruner": optuna.pruners.NopPruner(), "sampler": sampler_for(exp.seed, 0)}
        name = ledger_name(exp, storage)
        if name is not None:
            study = optuna.load_study(study_name=name, storage=storage, **how)
        else:
            study = optuna.create_study(
                study_name=new_ledger_name(exp, storage),
                storage=storage,
                direction="minimize",
                **how,
            )
            study.set_user_attr(DESIGN_ATTR, ablation_key(exp))
        queue_retries(study)  # a retry queued before the units counted as missing
        count = len(ablation_steps(exp))
        for index in missing_steps(study.get_trials(deepcopy=False), count):
            study.enqueue_trial({STEP_PARAM: index})
    return study


def open_ledger_records(
    exp: Experiment, settings: Settings
) -> tuple[optuna.Study, optuna.storages.BaseStorage, Tracker]:
    """The ledger, its storage and the MLflow experiment, without the data: what a launcher
    that trains nothing itself opens (loops.open_records' counterpart)."""
    storage = open_storage(settings)
    return open_ledger(exp, settings, storage), storage, open_tracker(exp, settings)


def open_ablation_share(
    exp: Experiment,
    settings: Settings,
    total: int,
    progress: Progress,
    *,
    new_study: bool = False,
    parent_id: str | None = None,
) -> Share:
    """What a process needs to run its share of an ablation's units (loops.open_share's
    counterpart): the ledger as its study, the arms' work as its unit."""
    assert exp.ablation is not None and not new_study
    ledger, storage, tracker = open_ledger_records(exp, settings)
    work = ArmWork(exp, settings, resolve_device(settings.device))
    return Share(
        exp,
        settings,
        ledger,
        storage,
        tracker,
        work.data(exp.ablation.tuning_seed_used),
        total,
        progress,
        Tally(),
        parent_id,
        unit=work,
    )


@dataclass
class ArmWork:
    """The ablation's unit of work (loops.Unit): tune an arm, or run it on one seed."""

    exp: Experiment
    settings: Settings
    device: Any
    cache: dict[int, Splits] = field(default_factory=dict)

    def data(self, seed: int) -> Splits:
        if seed not in self.cache:
            self.cache[seed] = load_splits(self.exp.data, seed, self.settings.cache_dir).to(
                self.device
            )
        return self.cache[seed]

    def __call__(
        self, share: Share, trial: optuna.Trial, tracker: Tracker | Recorder
    ) -> TrainResult | float:
        steps = ablation_steps(self.exp)
        step = steps[self.index(share, trial, len(steps))]
        chosen, best = self.tuned(share, step.arm)
        if step.seed is None:
            return best
        key = ablation_key(self.exp)
        finished = finished_arm_runs(share.tracker, key)
        if (step.arm, step.seed) in finished:  # run before (an older studylib, or a retry)
            value = finished[(step.arm, step.seed)]
            return value if math.isfinite(value) else 0.0
        strengths, nuisance = split_chosen(self.exp, step.arm, chosen)
        values = {**arm_values(step.arm, strengths), **nuisance, "seed": step.seed}
        # Arms that train to the end replay (stop_epoch/patience) the patience the
        # early-stopping arms stop with: the stopping-rule table speaks of that patience.
        given = given_strengths(self.exp)
        if "patience" in given:
            values["train.patience"] = given["patience"]
        assert self.exp.ablation is not None
        return run_trial(
            self.exp.with_values(values),
            self.data(step.seed),
            tracker,
            run_name=f"{step.arm}-seed{step.seed}",
            tags={
                ROLE_TAG: "arm",
                STUDY_TAG: self.exp.name,
                ARM_TAG: step.arm,
                SEED_TAG: str(step.seed),
                KEY_TAG: key,
            },
            parent_id=share.parent_id,
            progress=share.progress,
            test_curve=self.exp.ablation.test_curves,
            prune_evaluate=True,
            link=lambda run_id: trial.set_user_attr(RUN_ID_ATTR, run_id),
        ).result

    def index(self, share: Share, trial: optuna.Trial, count: int) -> int:
        """The unit this trial holds. One asked with none queued (a unit that failed for
        good, asked again on a resume) takes the first unit nothing holds: units are
        idempotent, so a rare duplicate costs nothing but a look."""
        system = share.storage.get_trial_system_attrs(
            trial_id(share.storage, share.study, trial.number)
        )
        if STEP_PARAM in trial.params or STEP_PARAM in (system.get("fixed_params") or {}):
            return trial.suggest_int(STEP_PARAM, 0, count - 1)
        free = missing_steps(share.study.get_trials(deepcopy=False), count, but=trial.number)
        index = free[0] if free else 0
        return trial.suggest_int(STEP_PARAM, index, index)

    def tuned(self, share: Share, arm: str) -> tuple[dict[str, Any], float]:
        """The arm's tuned config values and their validation loss, its tuning study run to its
        budget first if it is not there yet (resumed after a dead tuner), under the arm's
        tuning lock: one worker tunes an arm, sequentially, as one process does."""
        tuning = arm_tuning(self.exp, arm)
        if not tuning.space:
            return {}, 0.0
        name = tuning_name(share.study.study_name, self.exp, arm)
        with exclusive(
            self.settings.storage,
            f"tuning:{name}",
            wait_seconds=math.inf,
            on_wait=checkpoint,
            apart=True,
        ):
            return tune_arm(
                name,
                self.exp,
                arm,
                tuning.space,
                given_strengths(self.exp),
                share.storage,
                share.tracker,
                share.parent_id,
                self.data,
                tuning.budget,
            )


def split_chosen(
    exp: Experiment, arm: str, chosen: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An arm's strengths (given, or tuned) and tuned nuisance values, from its tuned values."""
    assert exp.ablation is not None
    given = given_strengths(exp)
    untuned = arm_tuning(exp, arm).untuned
    strengths = {k: given[k] for k in arm_knobs(arm) if k in given}
    strengths.update({KNOB_OF_PATH[p]: v for p, v in chosen.items() if KNOB_OF_PATH[p] in untuned})
    nuisance = {p: v for p, v in chosen.items() if KNOB_OF_PATH[p] in exp.ablation.nuisance}
    return strengths, nuisance


def chosen_strengths(
    exp: Experiment, storage: optuna.storages.BaseStorage, ledger: str
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every arm's strengths and nuisance values, read from its tuning study's best trial
    (arms whose tuning has not finished are left out); `ledger` names the design's ledger."""
    assert exp.ablation is not None
    strengths: dict[str, dict[str, Any]] = {}
    nuisance: dict[str, dict[str, Any]] = {}
    for arm in exp.ablation.arms:
        tuning = arm_tuning(exp, arm)
        chosen: dict[str, Any] = {}
        if tuning.space:
            name = tuning_name(ledger, exp, arm)
            if not study_exists(storage, name):
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            if counted_trials(study) < tuning.budget or not study.best_trials:
                continue
            chosen = suggest(optuna.trial.FixedTrial(study.best_trial.params), tuning.space)
        strengths[arm], nuisance[arm] = split_chosen(exp, arm, chosen)
    return strengths, nuisance


def start_ablation_run(exp: Experiment, tracker: Tracker, owner: dict[str, Any]) -> Run:
    """The ablation's parent MLflow run (every tuning and arm run is its child), owned by
    `owner` (the process or job that closes it: recovery.close_dead_sweeps)."""
    assert exp.ablation is not None
    parent = tracker.start_run(
        f"ablation-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            ROLE_TAG: "ablation",
            STUDY_TAG: exp.name,
            KEY_TAG: ablation_key(exp),
            TUNING_SEED_TAG: str(exp.ablation.tuning_seed_used),
            OWNER_ATTR: json.dumps(owner),
            **environment_tags(),
            **group_tags(exp),
        },
    )
    parent.log_params(applicable_params(exp))
    return parent


def finish_ablation(
    exp: Experiment,
    settings: Settings,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    parent_id: str,
    status: str = "FINISHED",
) -> dict[str, dict[str, Any]]:
    """Close the ablation's parent run with the strengths its tunings settled on: FINISHED once
    every unit is done (whoever gets there first: the last worker, or the launching command;
    once), or `status` (KILLED, FAILED) now. The strengths, as far as they are known."""
    strengths, _ = chosen_strengths(exp, storage, study.study_name)
    with exclusive(settings.storage, ledger_lock(exp)):
        if status == "FINISHED" and counted_trials(study) < len(ablation_steps(exp)):
            return strengths
        if tracker.run_states("ablation").get(parent_id) != "RUNNING":
            return strengths
        Run(tracker, parent_id).finish(
            status, tags={STRENGTHS_TAG: json.dumps(strengths, sort_keys=True)}
        )
    return strengths


def run_ablation(exp: Experiment, settings: Settings, workers: int = 1) -> AblationSummary:
    """Every unit of the ablation, in this process or in `workers` processes on this machine
    (workers.py), under one parent run; resumable (finished units are not run again)."""
    assert exp.ablation is not None
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = len(ablation_steps(exp))
    with stop_on_signals(at_safe_points=True):
        progress = Progress(total, 0, settings.progress)
        share = open_ablation_share(exp, settings, total, progress)
        tracker, key = share.tracker, ablation_key(exp)
        for note in close_dead_sweeps(tracker):
            say(note)
        before = set(finished_arm_runs(tracker, key))
        progress.sync(min(counted_trials(share.study), total))
        parent = start_ablation_run(exp, tracker, Worker.current().as_attr())
        share.parent_id = parent.run_id
        status = "FINISHED"
        try:
            if workers > 1:
                run_workers(share, workers, opener=open_ablation_share)
            else:
                trial_loop(share)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            progress.close()
            if tracker.down is None:
                finish_ablation(
                    exp, settings, share.study, share.storage, tracker, parent.run_id, status
                )
        if counted_trials(share.study) < total:
            finish_ablation(
                exp, settings, share.study, share.storage, tracker, parent.run_id, "FAILED"
            )
            raise Incomplete(
                f"ablation of {exp.name}: {counted_trials(share.study)} of {total} units done "
                "(the rest run on other machines, or failed): run it again to finish it"
            )
    strengths, nuisance = chosen_strengths(exp, share.storage, share.study.study_name)
    after = set(finished_arm_runs(tracker, key))
    return AblationSummary(
        parent.run_id,
        len(after - before),
        len(before),
        strengths,
        nuisance,
        time.monotonic() - started,
    )


def tune_arm(
    name: str,
    exp: Experiment,
    arm: str,
    space: dict[str, SearchRange],
    given: dict[str, Any],
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    parent_id: str | None,
    data: Callable[[int], Splits],
    trials: int,
) -> tuple[dict[str, Any], float]:
    """Best config values for `space` (`trials` Optuna trials of the tuning study `name`) on the
    tuning seed's validation loss, the knobs in `given` held at their given strengths, and that
    loss (resumable: the caller holds the arm's tuning lock, so a trial left RUNNING is a dead
    tuner's, failed here and queued again with the same parameters)."""
    assert exp.ablation is not None
    seed = exp.ablation.tuning_seed_used
    # No pruner: a tuning trial reports no intermediate values (its outcome is the arm's whole
    # run); the sampler is set below, seeded by the tuning seed and the trials so far.
    how = {"pruner": optuna.pruners.NopPruner()}
    if study_exists(storage, name):  # loaded: a journal records every create call
        study = optuna.load_study(study_name=name, storage=storage, **how)
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", **how)
    for note in fail_dead_tuning(study, storage, tracker, arm):
        say(note)

    def objective(trial: optuna.Trial) -> float:
        chosen = suggest(trial, space)
        trial_strengths = {**given, **{KNOB_OF_PATH[p]: v for p, v in chosen.items()}}
        values = {**arm_values(arm, trial_strengths), **chosen, "seed": seed}
        outcome = run_trial(
            exp.with_values(values),
            data(seed),
            tracker,
            run_name=f"tune-{arm}-{trial.number:03d}",
            tags={ROLE_TAG: "tune", STUDY_TAG: exp.name, ARM_TAG: arm},
            parent_id=parent_id,
            link=lambda run_id: trial.set_user_attr(RUN_ID_ATTR, run_id),
        )
        if outcome.status == "diverged":
            trial.set_user_attr("diverged", outcome.result.reason if outcome.result else "")
            return float("nan")
        return outcome.result.final["selected_val_loss"]

    remaining = trials - counted_trials(study)
    if remaining > 0:
        study.sampler = sampler_for(seed, len(study.trials))
        study.optimize(objective, n_trials=remaining)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"ablation arm {arm!r}: every tuning trial failed")
    best = study.best_trial
    return suggest(optuna.trial.FixedTrial(best.params), space), float(best.value)


def fail_dead_tuning(
    study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker, arm: str
) -> list[str]:
    """A tuning trial still RUNNING when its arm's tuning lock is free was left by a tuner that
    died: FAIL ("killed", so it runs again with the same parameters), its run KILLED (found by
    its name when the tuner died between creating the run and linking it to the trial)."""
    notes = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = "its tuner died (the arm's tuning lock was free)"
        number = trial_id(storage, study, trial.number)
        storage.set_trial_user_attr(number, FAILURE_ATTR, "killed")
        storage.set_trial_user_attr(number, REASON_ATTR, reason)
        study.tell(trial.number, state=TrialState.FAIL)
        run_ids = [trial.user_attrs[RUN_ID_ATTR]] if trial.user_attrs.get(RUN_ID_ATTR) else []
        if not run_ids:
            unlinked = tracker.search_runs(
                f"tags.`{ROLE_TAG}` = 'tune' and tags.`{ARM_TAG}` = '{arm}' and "
                f"attributes.run_name = 'tune-{arm}-{trial.number:03d}' and "
                "attributes.status = 'RUNNING'"
            )
            run_ids = [run.info.run_id for run in unlinked]
        for run_id in run_ids:
            tracker.close_run(run_id, "KILLED", {STATUS_TAG: "killed", REASON_TAG: reason})
        notes.append(f"{study.study_name} tuning trial {trial.number}: {reason}; marked FAIL")
    return notes + queue_retries(study)


def finished_arm_runs(tracker: Tracker, key: str) -> dict[tuple[str, int], float]:
    """(arm, seed) pairs of this design that already have a result: finished, or diverged
    (a deterministic outcome that running again would only repeat); each with its selected
    validation loss (0 where it has none)."""
    runs = tracker.search_runs(f"tags.`{ROLE_TAG}` = 'arm' and tags.`{KEY_TAG}` = '{key}'")
    return {
        (r.data.tags[ARM_TAG], int(r.data.tags[SEED_TAG])): float(
            r.data.metrics.get("selected_val_loss", 0.0)
        )
        for r in runs
        if r.info.status == "FINISHED" or r.data.tags.get(STATUS_TAG) == "diverged"
    }
