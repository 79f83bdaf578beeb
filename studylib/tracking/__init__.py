"""Tracking: takes a study's runs (configs, per-epoch figures, results), gives MLflow records.

store.py is the one door to MLflow (`Tracker`: the study's experiment, every call retried with
a bounded backoff; `Run`: one run written in batches); records.py is a run's writes as data
(`RecordedRun`, applied elsewhere by `apply`: the sweep's writer process); trial_run.py is a trial's MLflow life
(open with its config, feed its curve, close with how it ended), shared by every mode.
"""

from __future__ import annotations

from studylib.tracking.records import RecordedRun, Recorder, RunRecord, apply
from studylib.tracking.store import (
    Run,
    Tracker,
    TrackingUnavailable,
    environment_tags,
    open_tracker,
)
from studylib.tracking.trial_run import (
    applicable_params,
    close_interrupted_run,
    close_trial_run,
    effective_params,
    group_tags,
    run_description,
    start_trial_run,
    trial_run_name,
)

__all__ = [
    "RecordedRun",
    "Recorder",
    "applicable_params",
    "effective_params",
    "Run",
    "RunRecord",
    "apply",
    "Tracker",
    "TrackingUnavailable",
    "close_interrupted_run",
    "close_trial_run",
    "environment_tags",
    "group_tags",
    "open_tracker",
    "run_description",
    "start_trial_run",
    "trial_run_name",
]
