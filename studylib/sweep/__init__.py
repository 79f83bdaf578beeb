"""Sweep: takes an `Experiment` and `Settings`, gives a finished Optuna study whose every trial
is an MLflow child run under the sweep's parent run (and, with `[ablation]`, the arms over
seeds).

space.py the search space; storage.py the Optuna storage; study.py how every process opens the
study (pruner, sampler seed rule, settings it was created with); preflight.py every check
made before a store is opened; recovery.py dead workers' trials; claim.py the one claim protocol; trial.py one trial's config, training and run;
loops.py the loops every process runs (one trial or a population at a time); workers.py
`--workers N`; run.py a whole sweep; ablation.py the controlled design over seeds (its units,
tuning an arm or running it on a seed, claimed by the same loops as trials).
"""

from __future__ import annotations

from studylib.sweep.ablation import AblationSummary, run_ablation
from studylib.sweep.preflight import check_sweep, check_train
from studylib.sweep.run import SweepSummary, run_single, run_sweep
from studylib.sweep.storage import make_storage

__all__ = [
    "AblationSummary",
    "SweepSummary",
    "check_sweep",
    "check_train",
    "make_storage",
    "run_ablation",
    "run_single",
    "run_sweep",
]
