"""Opening a study: the one way every process (main, `--workers`, `--population`, launchers)
gets its Optuna study, with the experiment's pruner and sampler seed rule.

A study is created once (its settings stored, its baseline queued) and resumed after: reopening
it with other settings is refused. Optuna's `load_study` would give a worker the default median
pruner and an unseeded sampler; every process here calls `open_study` instead.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studylib.config import SEED_MAX, Experiment, Settings
from studylib.console import say
from studylib.errors import ConfigError
from studylib.locks import exclusive
from studylib.names import BASELINE_ATTR, CONFIG_ATTR, DIVERGED_ATTR
from studylib.redact import redact
from studylib.sweep.dashboard import name_objective
from studylib.sweep.space import baseline_params

# Finished trials that count toward the requested total. A FAIL without the diverged mark
# (a crash, a killed worker) does not count, so a resumed sweep runs it again.
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def count_done(trials: list[FrozenTrial]) -> int:
    """Trials that count toward the study's total: completed, pruned, or diverged (a result)."""
    return sum(
        1
        for t in trials
        if t.state in DONE_STATES
        or (t.state == TrialState.FAIL and t.user_attrs.get(DIVERGED_ATTR))
    )


def counted_trials(study: optuna.Study) -> int:
    return count_done(study.get_trials(deepcopy=False))


def sampler_for(seed: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The one sampler seed rule: seeded by the number of trials the study holds when it asks.

    A single process is reproducible, a resumed study does not replay its first parameters,
    and parallel workers (which ask at different counts) never sample alike. Trial k's
    parameters therefore depend on `seed + k` and, once TPE's random start-up is over, on
    which trials had finished when it was asked.
    """
    # Wrapped into numpy's 32-bit seed range (config.SEED_MAX): a seed near the top plus the
    # trial count must not overflow it. Constant liar: a trial still running counts as a bad
    # result, so the members of a population asked at once (and a trial asked while the one
    # before it is still being written, writer.py) are spread out instead of sampled alike.
    return optuna.samplers.TPESampler(
        seed=(seed + trials_so_far) % (SEED_MAX + 1), constant_liar=True
    )


def pruner_for(exp: Experiment) -> optuna.pruners.BasePruner:
    if not exp.sweep.pruner.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=exp.sweep.pruner.startup_trials,
        n_warmup_steps=exp.sweep.pruner.warmup_epochs,
    )


def open_study(
    exp: Experiment,
    settings: Settings,
    storage: optuna.storages.BaseStorage,
    *,
    new_study: bool = False,
) -> optuna.Study:
    """Create or resume the study `exp.name`; refuse one created with other settings.

    A new study stores its settings and queues the baseline, under the study's lock, so
    workers starting together do it once. With `new_study`, a study of the same name but other
    settings is left alone and the first free (or matching) `<name>-v2`, `-v3`, ... is used.
    """
    names = [exp.name] + [f"{exp.name}-v{k}" for k in range(2, 100)]
    for name in names:
        with exclusive(settings.storage, f"study:{name}"):
            # Loaded when it exists, not "created if missing": a journal records every create
            # call, so a resume that is then refused would still have written to it.
            how = {"pruner": pruner_for(exp), "sampler": sampler_for(exp.seed, 0)}
            if study_exists(storage, name):
                study = optuna.load_study(study_name=name, storage=storage, **how)
            else:
                study = optuna.create_study(
                    study_name=name, storage=storage, direction="minimize", **how
                )
                name_objective(study)  # optuna-dashboard shows it instead of "Objective 0"
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


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number`: what storage-level calls (heartbeats, attributes of
    a trial another process ran) take. Through Optuna's public storage API, not `_trial_id`."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def study_settings(exp: Experiment) -> dict[str, Any]:
    """What defines a study: everything but its name and how many trials it should hold."""
    settings = exp.model_dump(mode="json")
    settings.pop("name")
    settings["sweep"].pop("trials")
    return settings


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """One line per difference: `field old -> new`, or `section added` / `section removed`."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return (
            [] if stored == current else [f"{prefix} {json.dumps(stored)} -> {json.dumps(current)}"]
        )
    out = []
    for key in sorted(stored.keys() | current.keys()):
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in current:
            out.append(f"{path} removed")
        elif key not in stored:
            out.append(f"{path} added")
        else:
            out.extend(differences(stored[key], current[key], path))
    return out


def settings_changes(stored: dict[str, Any], exp: Experiment) -> list[str]:
    """How `exp` differs from the settings a study was created with.

    A field this version added, at its default, is no difference: defaults reproduce what the
    version that wrote `stored` did, so upgrading never refuses a resume. The stored settings are
    therefore read back through today's Experiment (filling new fields with their defaults);
    settings it no longer accepts (a field removed, a bound tightened) are compared as stored.
    """
    current = study_settings(exp)
    try:
        filled = Experiment.model_validate(
            {**stored, "name": exp.name, "sweep": {**stored["sweep"], "trials": exp.sweep.trials}}
        )
    except (ValueError, TypeError, KeyError):
        return differences(stored, current)
    return differences(study_settings(filled), current)


def check_same_settings(study: optuna.Study, exp: Experiment, where: str) -> None:
    """Refuse to resume a study created with other settings (exit code 2 at the CLI)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return
    changed = settings_changes(stored, exp)
    if changed:
        shown = "; ".join(changed[:8])
        if len(changed) > 8:
            shown += f"; and {len(changed) - 8} more"
        raise ConfigError(
            f"study {study.study_name!r} in {where} was created with other settings: {shown}. "
            "Resume with the settings it was created with, or pass --new-study to start a new "
            "study beside it"
        )


def same_settings(study: optuna.Study, exp: Experiment) -> bool:
    stored = study.user_attrs.get(CONFIG_ATTR)
    return stored is None or not settings_changes(stored, exp)
