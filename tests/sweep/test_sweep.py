"""End to end: a 3-trial, 3-epoch sweep into a temporary folder, resumed to 4, then the report."""

from __future__ import annotations

import json
import math
import re

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState
from pydantic import ValidationError

from studylib.config import Experiment
from studylib.report import write_report
from studylib.report.results import load_runs
from studylib.sweep import loops, run_sweep
from studylib.sweep import trial as trial_module
from studylib.sweep.space import baseline_params, suggest
from studylib.sweep.storage import make_storage

METRICS_PER_EPOCH = {"train/loss", "train/acc", "val/loss", "val/acc", "gap/loss", "gap/acc"}


def trial_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [exp.experiment_id], filter_string="tags.`studylib.role` = 'trial'", order_by=["start_time"]
    )


def test_sweep_logs_parent_children_and_resumes(tiny, settings, tmp_path):
    summary = run_sweep(tiny, settings)
    assert summary.trials_done == 3 and summary.trials_run == 3

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]

    children = trial_runs(client, "tiny")
    assert len(children) == 3
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.study_name"] == "tiny"
        assert run.data.tags["studylib.arch"] == "mlp"
        assert run.data.tags["studylib.torch"] == torch.__version__
        assert run.info.status == "FINISHED"
        # Full resolved config as params.
        assert run.data.params["model.hidden"] == "[32]"
        assert run.data.params["data.train_examples"] == "300"
        stopped = int(run.data.metrics["stopped_epoch"])
        for key in METRICS_PER_EPOCH:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, stopped + 1)), key
        assert 0 <= run.data.metrics["test_acc"] <= 1
        assert run.data.metrics["gap_loss"] == pytest.approx(
            run.data.metrics["selected_val_loss"] - run.data.metrics["selected_train_loss"]
        )

    # Trial 0 is the unregularized baseline, trained without early stopping.
    baseline = next(r for r in children if r.data.tags.get("studylib.baseline") == "true")
    assert baseline.data.tags["optuna.trial_number"] == "0"
    assert baseline.data.params["model.dropout"] == "0.0"
    assert baseline.data.params["train.l1"] == "0.0" and baseline.data.params["train.l2"] == "0.0"
    assert baseline.data.params["train.early_stopping"] == "False"
    assert baseline.data.metrics["stopped_epoch"] == 3

    # What the MLflow UI shows a newcomer: the experiment opens on its runs, described; run
    # names say what a trial is; one run (the best trial's) carries studylib.best; the data
    # set is a dataset input; params are those the data set reads, effective apart from sampled.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Regularization study `tiny`" in exp.tags["mlflow.note.content"]
    assert baseline.info.run_name == "trial 0: baseline (no regularization)"
    for run in children:
        number = run.data.tags["optuna.trial_number"]
        assert run.info.run_name.startswith(f"trial {number}: ")
        assert "mlp on mnist1d" in run.data.tags["mlflow.note.content"]
        assert not {"data.tokenizer", "data.languages", "data.typo_rate"} & set(run.data.params)
        assert run.data.params["effective.l1"] == run.data.params["train.l1"]
        patience = run.data.params["effective.patience"]
        assert patience == ("off" if run is baseline else run.data.params["train.patience"])
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "mnist1d" and len(dataset.dataset.digest) == 8
        assert '"generation_seed": 42' in json.loads(dataset.dataset.source)["tags"]["args"]
    best = [r for r in children if r.data.tags.get("studylib.best") == "true"]
    assert [r.data.tags["optuna.trial_number"] for r in best] == [
        parent.data.tags["studylib.best_trial"]
    ]

    # Optuna and MLflow agree: the objective is the kept weights' validation loss.
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(
            by_number[trial.number].data.metrics["selected_val_loss"]
        )
        assert trial.user_attrs["mlflow_run_id"] == by_number[trial.number].info.run_id

    # Resume: a second sweep adds trials up to the new total, under a new parent run.
    again = run_sweep(tiny, settings, trials=4)
    assert again.trials_done == 4 and again.trials_run == 1
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert len(trial_runs(client, "tiny")) == 4
    parents = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'sweep'")
    assert len(parents) == 2
    # The resumed sampler does not replay the first sweep's parameters.
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 4

    # The report is built from what MLflow holds.
    index = write_report(settings.tracking_uri, ["tiny"], tmp_path / "reports" / "tiny")
    folder = index.parent
    pngs = {p.name for p in folder.glob("*.png")}
    assert {"tiny-mlp-curves.png", "tiny-mlp-hparams.png", "tiny-mlp-importance.png"} <= pngs
    page = index.read_text()
    # Each figure embedded once or more (a static PNG also sits beside its interactive chart;
    # plotly's inlined script carries a 1x1 PNG of its own, far shorter than any figure).
    figures = set(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]{2000})", page))
    assert len(figures) == len(pngs)
    # Nothing to fetch: it opens offline (links into the MLflow UI are followed, not fetched).
    assert "src='http" not in page and "<link" not in page and "<script src" not in page
    markdown = (folder / "report.md").read_text()
    rows = [
        line for line in markdown.splitlines() if line.startswith("| ") and "(baseline)" in line
    ]
    assert len(rows) == 1
    runs = load_runs("tiny", settings.tracking_uri)
    assert len(runs) == 4 and runs["baseline"].sum() == 1
    assert runs["train.l1"].dtype.kind == "f"  # numbers come back as numbers


def test_search_space_and_baseline(tiny):
    study = optuna.create_study()
    study.enqueue_trial(baseline_params(tiny), user_attrs={"baseline": True})
    trial = study.ask()
    values = suggest(trial, tiny.sweep.search)
    assert (
        values["train.l1"] == 0.0 and values["train.l2"] == 0.0 and values["model.dropout"] == 0.0
    )
    assert set(trial.params) == {"dropout", "l1", "l1_on", "l2", "l2_on", "patience"}
    # A switched-on regularizer takes its sampled value from the range.
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, tiny.sweep.search)
        if trial.params["l2_on"]:
            assert 1e-6 <= values["train.l2"] <= 1e-2
        else:
            assert values["train.l2"] == 0.0
        assert 1 <= values["train.patience"] <= 3


def test_diverging_trials_fail_with_reason_and_sweep_goes_on(tiny, settings, monkeypatch):
    real_load = loops.load_splits

    def poisoned(*args, **kwargs):
        splits = real_load(*args, **kwargs)
        splits.x_train[0, 0] = math.inf
        return splits

    monkeypatch.setattr(loops, "load_splits", poisoned)
    summary = run_sweep(tiny, settings, trials=2)
    assert summary.trials_done == 2 and summary.best_value is None
    client = MlflowClient(settings.tracking_uri)
    runs = trial_runs(client, "tiny")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert run.data.tags["studylib.status"] == "diverged"
        assert "non-finite loss at epoch 1" in run.data.tags["studylib.reason"]
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_report_without_finished_runs_is_a_clear_error(settings, tmp_path, capsys):
    from studylib.cli import main

    code = main(["report", "--tracking-uri", settings.tracking_uri, "--out", str(tmp_path / "r")])
    assert code == 2
    assert "no studylib runs found" in capsys.readouterr().err


def test_train_command_logs_one_run(tiny, settings):
    from studylib.sweep import run_single

    outcome = run_single(tiny.with_values({"model.dropout": 0.2}), settings)
    run = MlflowClient(settings.tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["studylib.role"] == "train"
    assert run.data.params["model.dropout"] == "0.2"
    assert "model.pt" in {
        a.path for a in MlflowClient(settings.tracking_uri).list_artifacts(outcome.run_id)
    }
    assert json.loads(run.data.params["model.hidden"]) == [32]


def test_experiment_with_values_revalidates(tiny):
    with pytest.raises(ValidationError):
        tiny.with_values({"model.dropout": 1.0})
    assert isinstance(tiny.with_values({"train.lr": 0.5}), Experiment)


def test_train_command_passes_the_speed_knobs(tmp_path, monkeypatch):
    from studylib.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.toml").write_text(
        'name = "knobs"\n[data]\nnum_train = 200\nnum_test = 50\n'
        "[model]\nhidden = [8]\n[train]\nmax_epochs = 1\n"
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["train", "e.toml", "--precision", "bf16", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("knobs").experiment_id])
    assert run.data.tags["studylib.precision"] == "bf16"
    assert run.data.tags["studylib.compile"] == "False"


def test_crashed_trial_is_a_failed_run_carrying_its_error(tiny, settings, monkeypatch):
    def broken_fit(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trial_module, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="simulated"):
        run_sweep(tiny, settings, trials=1)
    client = MlflowClient(settings.tracking_uri)
    (run,) = trial_runs(client, "tiny")
    assert run.info.status == "FAILED"
    assert run.data.tags["studylib.status"] == "crashed"
    assert run.data.tags["studylib.reason"] == "RuntimeError: CUDA out of memory (simulated)"
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'sweep'")
    assert parent.info.status == "FAILED"
    # A crash is not a result: the study does not count it, so a resumed sweep runs it again.
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_report_lists_diverged_trials_with_their_reason(tiny, settings, tmp_path):
    exploding = tiny.with_values(
        {
            "train.optimizer": "sgd",
            "train.lr": 0.1,
            "sweep.search": {"l2": {"low": 100.0, "high": 1000.0, "log": True}},
        }
    )
    summary = run_sweep(exploding, settings, trials=3)
    assert summary.trials_done == 3  # diverged trials count: they are results
    index = write_report(settings.tracking_uri, ["tiny"], tmp_path / "reports" / "tiny")
    markdown = (index.parent / "report.md").read_text()
    section = markdown.split("## Trials without a result")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "diverged" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"]
    assert all("non-finite loss at epoch" in row for row in rows)
    assert "Trials without a result" in index.read_text()


def test_tracking_outage_mid_sweep_keeps_optuna_consistent_and_resume_names_gaps(
    tiny, settings, monkeypatch, capsys
):
    import dataclasses
    import socket

    from studylib.tracking import Run, TrackingUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # else MLflow retries for minutes
    try:  # the exception MLflow really raises when its server is gone
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("x")
    except Exception as exc:
        refused = exc
    finished = []
    real_finish, real_batch = Run.finish, MlflowClient.log_batch

    def finish(self, status):
        real_finish(self, status)
        finished.append(status)

    def log_batch(self, *args, **kwargs):
        if finished.count("FINISHED") >= 1:  # the server goes away after the first trial
            raise refused
        return real_batch(self, *args, **kwargs)

    monkeypatch.setattr(Run, "finish", finish)
    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    # The writer as a thread: the patches above reach this process only (the writer process
    # against a real server that stops: tests/sweep/test_faults.py, slow).
    quick = dataclasses.replace(settings, tracking_retry_seconds=0.3, writer="thread")
    with pytest.raises(TrackingUnavailable, match="trial 1 is marked FAIL"):
        run_sweep(tiny, quick, trials=3)
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["studylib.failure"] == "tracking"

    monkeypatch.setattr(MlflowClient, "log_batch", real_batch)  # the server is back
    capsys.readouterr()
    summary = run_sweep(tiny, quick, trials=3)
    err = capsys.readouterr().err
    assert "trials lacking complete MLflow records: 1 (run " in err
    assert "closed as FAILED" in err
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == study.trials[1].params
    assert summary.trials_done == 3 and retry.state == TrialState.COMPLETE
    client = MlflowClient(settings.tracking_uri)
    gap = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert gap.info.status == "FAILED" and gap.data.tags["studylib.status"] == "tracking"
