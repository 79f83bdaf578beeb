"""`studylib dashboard`: optuna-dashboard over the studies' Optuna storage, on 127.0.0.1.

It shows what neither the report nor the MLflow UI does: the optimization history, every
trial's intermediate values (what the pruner saw), the timeline, parallel coordinates. Each
study's objective gets its name (`set_metric_names`), so the dashboard says what is minimized
instead of "Objective 0". optuna-dashboard is an optional extra (`pip install -e .[dashboard]`).
"""

from __future__ import annotations

import warnings

import optuna

from studylib.errors import ConfigError

OBJECTIVE = "val loss of kept weights"  # what every studylib study minimizes (sweep/trial.py)


def name_objective(study: optuna.Study) -> bool:
    """Give the study's objective its name where it has none; True if it was named now."""
    if study.metric_names is not None:
        return False
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE])
    return True


def name_objectives(storage: optuna.storages.BaseStorage) -> int:
    """Name the objective of every study in `storage` that has none. Returns how many."""
    named = 0
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        named += name_objective(study)
    return named


def serve(storage: optuna.storages.BaseStorage, host: str, port: int) -> None:
    try:
        import optuna_dashboard  # optional: the `dashboard` extra
    except ImportError:
        raise ConfigError(
            "optuna-dashboard is not installed: `pip install -e '.[dashboard]'` "
            "(or `make dashboard`, which installs it)"
        ) from None
    optuna_dashboard.run_server(storage, host=host, port=port)
