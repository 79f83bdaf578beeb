"""Every key studylib writes into MLflow and Optuna, in one place.

MLflow run tags (`*_TAG`) are what the report, the UI and a notebook filter on; Optuna user
attributes (`*_ATTR`) are how a study remembers who runs a trial, why it failed and where its
MLflow run is. Renaming one breaks the reading of stores written before: add, do not rename.
"""

from __future__ import annotations

# MLflow run tags
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial under its sweep
STUDY_TAG = "optuna.study_name"
TRIAL_TAG = "optuna.trial_number"
ROLE_TAG = "studylib.role"  # sweep | ablation (parents), trial | arm | tune (children), train
STATUS_TAG = "studylib.status"  # completed, early_stopped, pruned, diverged, crashed, killed
REASON_TAG = "studylib.reason"
GROUP_TAG = "studylib.group"  # the study group (a group file) an experiment belongs to
RUN_KEY_TAG = "studylib.run_key"  # made before create_run: a retried create finds its own run
BASELINE_TAG = "studylib.baseline"  # "true" on the unregularized baseline trial
RETRY_OF_TAG = "studylib.retry_of"  # the trial number a retried trial runs again
BEST_TRIAL_TAG = "studylib.best_trial"  # on a sweep's parent run
STORAGE_TAG = "studylib.storage"  # the Optuna storage a sweep used (password masked)
LAUNCHER_TAG = "studylib.launcher"  # on a launched sweep's parent run: "slurm job 12 (4 tasks)"
ARM_TAG = "studylib.arm"
SEED_TAG = "studylib.ablation_seed"
KEY_TAG = "studylib.ablation_key"  # the design an ablation run belongs to
STRENGTHS_TAG = "studylib.strengths"  # on an ablation's parent run: the strengths it used
TUNING_SEED_TAG = "studylib.tuning_seed"  # on an ablation's parent run: the seed arms tuned on
ARCH_TAG = "studylib.arch"
DATASET_TAG = "studylib.dataset"
RUN_SEED_TAG = "studylib.seed"
DEVICE_TAG = "studylib.device"
PRECISION_TAG = "studylib.precision"
COMPILE_TAG = "studylib.compile"
# "optuna": a run re-made from what Optuna holds after the trial's own run was lost
RELOGGED_TAG = "studylib.relogged_from"

# Written at report time or by the sweep's bookkeeping, read by the MLflow UI
BEST_TAG = "studylib.best"  # "true" on the study's current best trial run (moved when beaten)
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own: setting it renames a run (a pruned trial)
NOTE_TAG = "mlflow.note.content"  # MLflow's own: a run's or experiment's description
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's own: which page the UI opens on
# "custom_model_development": the runs table; without it an experiment of only runs opens on
# the GenAI traces page (seen with MLflow 3.17, whose UI reads this experiment tag).
EXPERIMENT_KIND = "custom_model_development"
UI_PORT = 5000  # `studylib ui` / `make ui`: the address reports link to for a local store

# Optuna trial and study user attributes
# {"host", "boot", "pid", "started"} of the worker running a trial or a sweep; a launched
# sweep's parent run is owned by its job instead: {"engine", "job", "where"} (sweep/owners.py)
OWNER_ATTR = "studylib.worker"
FAILURE_ATTR = "studylib.failure"  # why a trial FAILed: killed, interrupted, tracking, diverged
REASON_ATTR = "studylib.reason"
RUN_ID_ATTR = "mlflow_run_id"
CONFIG_ATTR = "studylib.config"  # study attribute: the settings the study was created with
DESIGN_ATTR = "studylib.ablation_key"  # study attribute: the design an ablation's ledger holds
BASELINE_ATTR = "baseline"  # the one user attribute a retried trial inherits
DIVERGED_ATTR = "diverged"  # a FAIL that is a result (non-finite loss), not a crash
