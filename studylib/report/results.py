"""Results as pandas DataFrames: the data the report uses, for a notebook user too.

    from studylib.report import load_runs, load_curves
    runs = load_runs("mlp_mnist1d")                 # one row per run: params, finals, tags
    curves = load_curves(runs.run_id, ["val/loss"])  # long form: run_id, key, epoch, value

Both read what MLflow holds. `load_curves` reads a SQL tracking store (sqlite, postgresql, ...)
in one query per chunk of runs instead of one request per run and metric, which keeps a
thousand-run study fast; for a tracking server it falls back to MLflow's client API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import mlflow
import pandas as pd
import sqlalchemy
from mlflow import MlflowClient

from studylib.names import KEY_TAG, ROLE_TAG

CURVE_KEYS = ("train/loss", "val/loss", "train/acc", "val/acc")
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
CHUNK = 500  # runs per SQL query: well under every database's bound-parameter limit


def load_runs(
    experiments: str | Sequence[str],
    tracking_uri: str = "sqlite:///mlflow.db",
    roles: Sequence[str] = ("trial", "arm"),
) -> pd.DataFrame:
    """One row per run of the given roles ("trial": sweep trials, "arm": ablation runs).

    Columns: run_id, experiment, role, status (studylib's: completed, early_stopped, pruned,
    diverged, ...), mlflow_status, start_time, arch, dataset, seed, trial (sweep trial number
    or -1), arm ("" for sweep trials), design (an ablation run's `studylib.ablation_key`, ""
    for sweep trials), baseline (bool); every param under its config path ("train.l1",
    numbers as numbers); every final metric under its name ("test_acc"); every tag under
    "tag:<name>".
    """
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    mlflow.set_tracking_uri(tracking_uri)
    found = [n for n in names if MlflowClient(tracking_uri).get_experiment_by_name(n) is not None]
    if not found:
        return pd.DataFrame()
    # MLflow's filter language has no IN for tags: one search per role.
    parts = [
        mlflow.search_runs(experiment_names=found, filter_string=f"tags.`{ROLE_TAG}` = '{role}'")
        for role in roles
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    raw = pd.concat(parts, ignore_index=True)
    experiment_names = {
        MlflowClient(tracking_uri).get_experiment_by_name(n).experiment_id: n for n in found
    }
    out = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "experiment": raw["experiment_id"].map(experiment_names),
            "experiment_id": raw["experiment_id"],
            "role": raw[f"tags.{ROLE_TAG}"],
            "status": _column(raw, "tags.studylib.status"),
            "mlflow_status": raw["status"],
            "start_time": raw["start_time"],
            "arch": _column(raw, "tags.studylib.arch"),
            "dataset": _column(raw, "tags.studylib.dataset"),
            "seed": pd.to_numeric(_column(raw, "params.seed"), errors="coerce"),
            "trial": pd.to_numeric(_column(raw, "tags.optuna.trial_number"), errors="coerce")
            .fillna(-1)
            .astype(int),
            "arm": _column(raw, "tags.studylib.arm"),
            "design": _column(raw, f"tags.{KEY_TAG}"),
            "baseline": _column(raw, "tags.studylib.baseline").eq("true"),
        }
    )
    params = {c.removeprefix("params."): _numeric(raw[c]) for c in raw if c.startswith("params.")}
    metrics = {c.removeprefix("metrics."): raw[c] for c in raw if c.startswith("metrics.")}
    tags = {"tag:" + c.removeprefix("tags."): raw[c] for c in raw if c.startswith("tags.")}
    extra = pd.DataFrame({**params, **metrics, **tags}, index=raw.index)
    extra = extra.drop(columns=[c for c in extra if c in out.columns])
    table = pd.concat([out, extra], axis=1)
    return table.sort_values(["experiment", "role", "arm", "seed", "trial"]).reset_index(drop=True)


def load_curves(
    run_ids: Iterable[str],
    keys: Sequence[str] = CURVE_KEYS,
    tracking_uri: str = "sqlite:///mlflow.db",
    prefixes: Sequence[str] = (),
) -> pd.DataFrame:
    """Per-epoch histories in long form: run_id, key, epoch, value (sorted).

    `prefixes` adds every metric whose name starts with one of them ("grad_norm/": the
    per-layer gradient norms, whose names depend on the model).
    """
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return pd.DataFrame(columns=["run_id", "key", "epoch", "value"])
    if prefixes:
        keys = list(keys) + _keys_with_prefixes(ids, prefixes, tracking_uri)
    if tracking_uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES:
        frame = _curves_from_sql(ids, keys, tracking_uri)
    else:
        frame = _curves_from_client(ids, keys, tracking_uri)
    return frame.sort_values(["run_id", "key", "epoch"]).reset_index(drop=True)


def _keys_with_prefixes(ids: list[str], prefixes: Sequence[str], uri: str) -> list[str]:
    client = MlflowClient(uri)
    found: set[str] = set()
    for run_id in ids:
        found |= {k for k in client.get_run(run_id).data.metrics if k.startswith(tuple(prefixes))}
    return sorted(found)


def _curves_from_sql(ids: list[str], keys: Sequence[str], uri: str) -> pd.DataFrame:
    # MLflow's SQL store keeps every logged point in its `metrics` table
    # (run_uuid, key, value, timestamp, step, is_nan).
    engine = sqlalchemy.create_engine(uri)
    query = sqlalchemy.text(
        # MLflow stores a NaN as value 0 with is_nan set: read it back as NaN, as its API does.
        "SELECT run_uuid AS run_id, key, step AS epoch, "
        "CASE WHEN is_nan THEN NULL ELSE value END AS value FROM metrics "
        "WHERE run_uuid IN :ids AND key IN :keys"
    ).bindparams(
        sqlalchemy.bindparam("ids", expanding=True), sqlalchemy.bindparam("keys", expanding=True)
    )
    parts = []
    try:
        with engine.connect() as connection:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                parts.append(
                    pd.read_sql(query, connection, params={"ids": chunk, "keys": list(keys)})
                )
    finally:
        engine.dispose()
    frame = pd.concat(parts, ignore_index=True)
    frame["value"] = frame["value"].astype(float)  # NULL (a NaN) as NaN
    # A value logged twice at one step (a retried write) counts once.
    return frame.drop_duplicates(["run_id", "key", "epoch"], keep="last")


def _curves_from_client(ids: list[str], keys: Sequence[str], uri: str) -> pd.DataFrame:
    client = MlflowClient(uri)
    rows = [
        (run_id, key, m.step, m.value)
        for run_id in ids
        for key in keys
        for m in client.get_metric_history(run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value"])
    return frame.drop_duplicates(["run_id", "key", "epoch"], keep="last")


def _column(raw: pd.DataFrame, name: str) -> pd.Series:
    return raw[name].fillna("") if name in raw else pd.Series("", index=raw.index)


def _numeric(column: pd.Series) -> pd.Series:
    converted = pd.to_numeric(column, errors="coerce")
    # Keep text (an activation name, a JSON list) where any value is not a number.
    return converted if converted.notna().sum() == column.notna().sum() else column
