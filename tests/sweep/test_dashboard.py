"""`studylib dashboard`: every study's objective named for optuna-dashboard, served on the
loopback address only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from studylib.sweep.dashboard import OBJECTIVE, name_objectives
from studylib.sweep.storage import make_storage


def test_objectives_are_named_once(tmp_path):
    storage = make_storage(str(tmp_path / "optuna.journal"))
    optuna.create_study(study_name="a", storage=storage)
    named = optuna.create_study(study_name="b", storage=storage)
    named.set_metric_names(["mine"])
    assert name_objectives(storage) == 1  # "b" keeps the name it has
    assert optuna.load_study(study_name="a", storage=storage).metric_names == [OBJECTIVE]
    assert optuna.load_study(study_name="b", storage=storage).metric_names == ["mine"]
    assert name_objectives(storage) == 0


def test_dashboard_serves_the_studies_on_loopback(tmp_path):
    pytest.importorskip("optuna_dashboard")
    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="tiny", storage=make_storage(str(journal)))
    study.add_trial(optuna.trial.create_trial(value=1.5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "studylib",
            "dashboard",
            "--storage",
            str(journal),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout.readline().startswith(f"open http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get(port, "/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["tiny"]
        detail = get(port, f"/api/studies/{studies[0]['study_id']}")
        assert detail["objective_names"] == [OBJECTIVE]  # not "Objective 0"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return json.load(answer)
