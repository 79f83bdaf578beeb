"""A study's completeness: every trial Optuna holds, against the runs MLflow holds.

The report reads MLflow, but Optuna decides what a study holds. A trial whose run was never
written (it crashed before its run existed) or was lost (a damaged mlflow.db, before the next
sweep re-logs it) would be absent from a report of MLflow alone, and the study would look
complete when it is not. With the study's storage at hand (`studylib report --storage`, by
default the journal the sweeps write) the report lists every such trial, read without writing
anything (no lock, no repair, no table created).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
import pandas as pd

from studylib.locations import Location
from studylib.names import DIVERGED_ATTR, FAILURE_ATTR, REASON_ATTR, RELOGGED_TAG
from studylib.redact import redact
from studylib.sweep.storage import JournalReader


def open_for_reading(storage: Location) -> optuna.storages.BaseStorage:
    if storage.kind == "journal":
        return optuna.storages.JournalStorage(JournalReader(str(storage.path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        return optuna.storages.RDBStorage(
            storage.text, skip_table_creation=True, skip_compatibility_check=True
        )


def trials_without_runs(storage: Location, studies: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per Optuna trial of `studies` that has no MLflow run among `runs` (the sweep
    trials `load_runs` read): study, trial, state, why it ended."""
    reader = open_for_reading(storage)
    known = set(optuna.get_all_study_names(reader))
    trials = runs[runs["role"] == "trial"] if not runs.empty else runs
    rows = []
    for name in studies:
        if name not in known:
            continue
        logged = (
            set(trials.loc[trials["experiment"] == name, "trial"]) if not trials.empty else set()
        )
        for trial in optuna.load_study(study_name=name, storage=reader).get_trials(deepcopy=False):
            if trial.number in logged:
                continue
            attrs = trial.user_attrs
            why = attrs.get(DIVERGED_ATTR) or attrs.get(REASON_ATTR) or ""
            rows.append(
                {
                    "study": name,
                    "trial": trial.number,
                    "optuna state": trial.state.name,
                    "failure": attrs.get(FAILURE_ATTR, ""),
                    "reason": redact(str(why))[:300],
                    "value": trial.value if trial.value is not None else float("nan"),
                }
            )
    return pd.DataFrame(
        rows, columns=["study", "trial", "optuna state", "failure", "reason", "value"]
    )


def split_relogged(finished: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with their own curves, runs re-logged from Optuna, which have none to draw)."""
    column = f"tag:{RELOGGED_TAG}"
    if finished.empty or column not in finished:
        return finished, finished.iloc[0:0]
    mask = finished[column].fillna("").astype(str) != ""
    return finished[~mask], finished[mask]


@dataclass
class Completeness:
    note: str  # a sentence for the report's introduction ("" when there is nothing to say)
    tables: list[tuple[str, str, pd.DataFrame]]  # (section title, caption, table)


def completeness(
    runs: pd.DataFrame,
    relogged: pd.DataFrame,
    studies: list[str],
    storage: Location | None,
) -> Completeness:
    """What the report says about the study's completeness: the runs re-logged from Optuna, and
    (with the storage) the trials Optuna holds without any MLflow run."""
    notes, tables = [], []
    if not relogged.empty:
        columns = [c for c in RELOGGED_COLUMNS if c in relogged]
        notes.append(
            f"{len(relogged)} finished run(s) were re-logged from Optuna after their own MLflow "
            "run was lost: their values are listed, but they have no curves and are left out "
            "of the figures."
        )
        tables.append(
            (
                "Trials re-logged from Optuna",
                "Finished trials whose MLflow run was lost, made again from what Optuna holds "
                "(parameters, validation curve, value, test accuracy); not in any figure.",
                relogged[columns].reset_index(drop=True),
            )
        )
    if storage is not None:
        missing = trials_without_runs(storage, studies, runs)
        if missing.empty:
            notes.append(f"Every trial Optuna holds ({storage.redacted}) has an MLflow run.")
        else:
            finished = (missing["optuna state"] != "RUNNING").sum()
            notes.append(
                f"Incomplete: {len(missing)} trial(s) Optuna holds ({storage.redacted}) have no "
                f"MLflow run ({finished} finished: the next `studylib sweep` re-logs them from "
                'Optuna); listed under "Trials without an MLflow run".'
            )
            tables.append(
                (
                    "Trials without an MLflow run",
                    "Trials Optuna holds that have no MLflow run: not in any figure.",
                    missing,
                )
            )
    return Completeness(" " + " ".join(notes) if notes else "", tables)


RELOGGED_COLUMNS = ("experiment", "trial", "status", "selected_val_loss", "test_acc", "baseline")
