"""Addresses into the MLflow UI: built from the tracking URI, never with its password, always
on the UI's "Model training" side, and the compare view's JSON lists decodable."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

from studylib.report import links


def test_ui_base_from_the_tracking_uri():
    assert links.ui_base("sqlite:///mlflow.db") == "http://127.0.0.1:5000"  # make ui
    assert links.ui_base("postgresql://u:pw@db/mlflow") == "http://127.0.0.1:5000"
    server = links.ui_base("https://alice:s3cret@mlflow.example.org:8443/mlflow/")
    assert server == "https://mlflow.example.org:8443/mlflow"
    assert "s3cret" not in server and "alice" not in server


def fragment_query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(urlsplit(url).fragment).query)


def test_every_address_opens_the_model_training_side():
    base = "http://127.0.0.1:5000"
    run = links.run_url(base, "3", "abc")
    assert run.startswith(f"{base}/#/experiments/3/runs/abc/model-metrics?")  # the curves tab
    experiment = links.experiment_url(base, "3")
    compare = links.compare_url(base, ["3", "3"], ["a", "b"])
    for url in (run, experiment, compare, links.home_url(base)):
        assert fragment_query(url)["workflowType"] == ["machine_learning"], url
    query = fragment_query(experiment)
    assert query["searchFilter"] == ["tags.`studylib.role` = 'trial'"]
    assert query["orderByKey"] == ["metrics.`selected_val_loss`"]
    compared = fragment_query(compare)
    assert json.loads(unquote(compared["runs"][0])) == ["a", "b"]
    assert json.loads(compared["experiments"][0]) == ["3"]


def test_report_help_says_what_it_writes_and_its_defaults(capsys):
    from studylib.cli import main

    assert main(["report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "reports/index.html (the landing page: open it first)" in text
    assert "output folder (default reports)" in text
    assert "default optuna.journal)" in text
    assert "MLflow tracking URI (default sqlite:///mlflow.db)" in text
    assert "(default: None)" not in text and "(default: True)" not in text  # no stray defaults


def test_studylib_ui_lists_each_study_by_its_runs_address(tiny, settings, tmp_path):
    from studylib.cli import _study_addresses
    from studylib.tracking import open_tracker

    assert _study_addresses(f"sqlite:///{tmp_path / 'absent.db'}", "http://h:1") == []
    assert not (tmp_path / "absent.db").exists()  # a store not made yet is not made here
    tracker = open_tracker(tiny, settings)
    (name, url), *more = _study_addresses(settings.tracking_uri, "http://h:1")
    assert (name, more) == ("tiny", [])
    assert url == links.experiment_url("http://h:1", tracker.experiment_id)
