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
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import optuna

from studylib.config import (
    ARM_KNOBS,
    ARM_MONITOR,
    SEARCHABLE,
    Experiment,
    SearchRange,
    Settings,
    all_regularizers_off,
)
from studylib.console import Progress
from studylib.data import load_splits
from studylib.names import (
    ARM_TAG,
    KEY_TAG,
    ROLE_TAG,
    SEED_TAG,
    STATUS_TAG,
    STRENGTHS_TAG,
    STUDY_TAG,
    TUNING_SEED_TAG,
)
from studylib.sweep.space import suggest, switched_on
from studylib.sweep.storage import make_storage
from studylib.sweep.study import counted_trials, sampler_for
from studylib.sweep.trial import run_trial
from studylib.tracking import Tracker, applicable_params, environment_tags, group_tags, open_tracker
from studylib.train import resolve_device

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


def run_ablation(exp: Experiment, settings: Settings) -> AblationSummary:
    assert exp.ablation is not None
    started = time.monotonic()
    plan = exp.ablation
    device = resolve_device(settings.device)
    tracker = open_tracker(exp, settings)
    key = ablation_key(exp)
    done = finished_arm_runs(tracker, key)
    tuning_seed = plan.tuning_seed_used
    parent = tracker.start_run(
        f"ablation-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            ROLE_TAG: "ablation",
            STUDY_TAG: exp.name,
            KEY_TAG: key,
            TUNING_SEED_TAG: str(tuning_seed),
            **environment_tags(),
            **group_tags(exp),
        },
    )
    parent.log_params(applicable_params(exp))
    splits = {
        seed: load_splits(exp.data, seed, settings.cache_dir).to(device)
        for seed in (*plan.seeds, tuning_seed)
    }
    storage = make_storage(settings.storage)

    given = {k: v for k, v in plan.strength.model_dump().items() if v is not None}
    strengths: dict[str, dict[str, Any]] = {}  # arm -> knob -> strength (given or tuned)
    nuisance: dict[str, dict[str, Any]] = {}
    progress = Progress(len(plan.arms) * len(plan.seeds), 0, settings.progress)
    ran = skipped = 0
    status = "FINISHED"
    try:
        for arm in plan.arms:
            untuned = [k for k in arm_knobs(arm) if k not in given]
            space = {k: switched_on(exp.sweep.search[k]) for k in untuned}
            space.update(plan.nuisance)
            knobs = 1 if plan.tune_budget == "per_arm" else max(1, len(untuned))
            budget = plan.tune_trials * knobs
            chosen = tune_arm(
                exp, arm, space, given, storage, tracker, parent.run_id, splits, budget
            )
            strengths[arm] = {k: given[k] for k in arm_knobs(arm) if k in given}
            strengths[arm].update(
                {KNOB_OF_PATH[p]: v for p, v in chosen.items() if KNOB_OF_PATH[p] in untuned}
            )
            nuisance[arm] = {p: v for p, v in chosen.items() if KNOB_OF_PATH[p] in plan.nuisance}
            for seed in plan.seeds:
                progress.start_trial(f"{arm}/seed {seed}")
                if (arm, seed) in done:
                    skipped += 1
                    progress.finish_trial(None)
                    continue
                values = {**arm_values(arm, strengths[arm]), **nuisance[arm], "seed": seed}
                cfg = exp.with_values(values)
                outcome = run_trial(
                    cfg,
                    splits[seed],
                    tracker,
                    run_name=f"{arm}-seed{seed}",
                    tags={
                        ROLE_TAG: "arm",
                        STUDY_TAG: exp.name,
                        ARM_TAG: arm,
                        SEED_TAG: str(seed),
                        KEY_TAG: key,
                    },
                    parent_id=parent.run_id,
                    progress=progress,
                    test_curve=plan.test_curves,
                    prune_evaluate=True,
                )
                ran += 1
                final = outcome.result.final if outcome.result else {}
                progress.finish_trial(final.get("selected_val_loss"))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        progress.close()
        parent.set_tags({STRENGTHS_TAG: json.dumps(strengths, sort_keys=True)})
        parent.finish(status)
    return AblationSummary(
        parent.run_id, ran, skipped, strengths, nuisance, time.monotonic() - started
    )


def tune_arm(
    exp: Experiment,
    arm: str,
    space: dict[str, SearchRange],
    given: dict[str, Any],
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    parent_id: str,
    splits: dict,
    trials: int,
) -> dict[str, Any]:
    """Best config values for `space` (`trials` Optuna trials) on the tuning seed's validation
    loss, the knobs in `given` held at their given strengths (resumable)."""
    if not space:
        return {}
    assert exp.ablation is not None
    seed = exp.ablation.tuning_seed_used
    study = optuna.create_study(
        study_name=f"{exp.name}.ablation.{arm}.{ablation_key(exp)}",
        storage=storage,
        direction="minimize",
        load_if_exists=True,
    )
    study.sampler = sampler_for(seed, len(study.trials))

    def objective(trial: optuna.Trial) -> float:
        chosen = suggest(trial, space)
        trial_strengths = {**given, **{KNOB_OF_PATH[p]: v for p, v in chosen.items()}}
        values = {**arm_values(arm, trial_strengths), **chosen, "seed": seed}
        outcome = run_trial(
            exp.with_values(values),
            splits[seed],
            tracker,
            run_name=f"tune-{arm}-{trial.number:03d}",
            tags={ROLE_TAG: "tune", STUDY_TAG: exp.name, ARM_TAG: arm},
            parent_id=parent_id,
        )
        if outcome.status == "diverged":
            trial.set_user_attr("diverged", outcome.result.reason if outcome.result else "")
            return float("nan")
        return outcome.result.final["selected_val_loss"]

    remaining = trials - counted_trials(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"ablation arm {arm!r}: every tuning trial failed")
    return suggest(optuna.trial.FixedTrial(study.best_trial.params), space)


def finished_arm_runs(tracker: Tracker, key: str) -> set[tuple[str, int]]:
    """(arm, seed) pairs of this design that already have a result: finished, or diverged
    (a deterministic outcome that running again would only repeat)."""
    runs = tracker.search_runs(f"tags.`{ROLE_TAG}` = 'arm' and tags.`{KEY_TAG}` = '{key}'")
    return {
        (r.data.tags[ARM_TAG], int(r.data.tags[SEED_TAG]))
        for r in runs
        if r.info.status == "FINISHED" or r.data.tags.get(STATUS_TAG) == "diverged"
    }
