"""The search space: one definition for the sampler, the baseline trial and the report.

`distributions` turns an experiment's `[sweep.search]` ranges into Optuna distributions (the
only place that knows patience is a whole number and that `allow_zero` adds a `<name>_on`
switch); `suggest` samples them, `baseline_params` pins them to "off", and the report rebuilds
the same distributions for its importance figure.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from studylib.config import REGULARIZER_OFF, SEARCHABLE, Experiment, SearchRange

INTEGER = ("patience",)  # searched as whole numbers


def switch(name: str) -> str:
    """The Optuna parameter that switches regularizer `name` on or off (`allow_zero`)."""
    return f"{name}_on"


def distributions(search: dict[str, SearchRange]) -> dict[str, BaseDistribution]:
    """Optuna's distribution of every parameter a trial of this search samples."""
    out: dict[str, BaseDistribution] = {}
    for name, rng in search.items():
        if name in INTEGER:
            out[name] = IntDistribution(int(rng.low), int(rng.high), log=rng.log)
        else:
            out[name] = FloatDistribution(rng.low, rng.high, log=rng.log)
        if rng.allow_zero:
            out[switch(name)] = CategoricalDistribution([True, False])
    return out


def suggest(trial: optuna.Trial, search: dict[str, SearchRange]) -> dict[str, Any]:
    """Config values for one trial: `{"model.dropout": 0.2, "train.l1": 0.0, ...}`."""
    values: dict[str, Any] = {}
    for name, dist in distributions(search).items():
        if isinstance(dist, IntDistribution):
            value: Any = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            value = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        else:  # a switch: both it and the strength are always suggested, so importance sees both
            if not trial.suggest_categorical(name, list(dist.choices)):
                regularizer = name.removesuffix("_on")
                values[SEARCHABLE[regularizer]] = REGULARIZER_OFF[regularizer]
            continue
        values[SEARCHABLE[name]] = value  # its switch, suggested next, may turn it off
    return values


def baseline_params(exp: Experiment) -> dict[str, Any]:
    """Optuna params that make trial 0 the unregularized baseline."""
    params: dict[str, Any] = {}
    for name, dist in distributions(exp.sweep.search).items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = False  # switched off
        elif name in REGULARIZER_OFF:
            params[name] = max(dist.low, REGULARIZER_OFF[name])  # the range's end nearest off
        elif name in INTEGER:
            params[name] = dist.high  # patience: unused, the baseline trains without stopping
        else:  # a nuisance hyperparameter: the experiment's fixed value, kept inside the range
            current = float(exp.value(SEARCHABLE[name]))
            params[name] = min(max(current, dist.low), dist.high)
    return params


def switched_on(rng: SearchRange) -> SearchRange:
    """The range of a regularizer studied switched on (an ablation arm): never at 0."""
    if rng.low > 0:
        return rng.model_copy(update={"allow_zero": False})
    # A linear range starting at 0 (dropout): start one hundredth of the way in.
    return rng.model_copy(update={"allow_zero": False, "low": rng.high / 100})
