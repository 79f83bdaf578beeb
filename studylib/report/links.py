"""Addresses in the MLflow UI for the runs a report names, built from the tracking URI the
report read: a tracking server's own address (its password left out), or for a store the UI
has to be started over (`sqlite:`, `postgresql:`, a folder) the address `make ui` serves
(`studylib ui`, 127.0.0.1 on UI_PORT). The UI routes pages by the fragment (`#/...`).

Every address carries `workflowType=machine_learning`: MLflow 3.17's UI picks its GenAI or
"Model training" side from that query parameter, else from the browser's local storage,
defaulting to GenAI, whose experiment page is an empty traces overview. The experiment tag
`mlflow.experimentKind` (set too, names.py) does not change that page (seen in Chromium).
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from studylib.names import UI_PORT

LOCAL_UI = f"http://127.0.0.1:{UI_PORT}"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI that shows this tracking store."""
    if tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")  # never the user:password
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return LOCAL_UI


TRAINING = "workflowType=machine_learning"


def home_url(base: str) -> str:
    return f"{base}/#/experiments?{TRAINING}"


def experiment_url(base: str, experiment_id: str, role: str | None = "trial") -> str:
    """The experiment's runs table (not its traces view): with `role`, only those runs (the
    sweep's trials, flat rather than folded under their sweep), lowest validation loss first."""
    query = TRAINING
    if role:
        query += "&" + urlencode(
            {
                "searchFilter": f"tags.`studylib.role` = '{role}'",
                "orderByKey": "metrics.`selected_val_loss`",
                "orderByAsc": "true",
            },
            quote_via=quote,
        )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run page on its model-metrics tab (the curves): MLflow 3's run page routes each tab
    (`overview`, `model-metrics`, `system-metrics`, `artifacts`) and opens on the overview."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{TRAINING}"


def compare_url(base: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    """MLflow's compare view of these runs (its route: `/compare-runs?runs=[..]&experiments=[..]`,
    JSON lists)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING}"
