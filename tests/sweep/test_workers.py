"""Parallel workers: exact trial totals under one parent run, threads within the cores."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time

import optuna
import pytest
import torch
from conftest import local_settings
from mlflow import MlflowClient

from studylib.errors import ConfigError
from studylib.locations import parse_storage
from studylib.names import OWNER_ATTR
from studylib.sweep import run_sweep, workers
from studylib.sweep.storage import make_storage
from studylib.sweep.study import counted_trials
from studylib.sweep.workers import check_workers, how_it_ended, threads_per_worker


@pytest.mark.parametrize(
    ("workers_", "cores", "threads"), [(1, 16, 16), (2, 2, 1), (3, 16, 5), (2, 1, 1), (4, 8, 2)]
)
def test_workers_times_threads_stay_within_the_cores(workers_, cores, threads):
    assert threads_per_worker(workers_, cores) == threads
    assert workers_ * threads <= max(cores, workers_)


def test_bad_worker_settings_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    with pytest.raises(ConfigError, match=r"--workers = 3: .* 2 cores; allowed 1..2"):
        check_workers(3, parse_storage("optuna.journal"))
    with pytest.raises(ConfigError, match="SQLite locks under parallel"):
        check_workers(2, parse_storage("sqlite:///optuna.db"))
    check_workers(2, parse_storage("optuna.journal"))  # fine


def test_cli_rejects_more_workers_than_cores_before_running(tmp_path, monkeypatch, capsys):
    from studylib.cli import main

    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.toml").write_text('name = "e"\n')
    assert main(["sweep", "e.toml", "--workers", "3"]) == 2
    assert "--workers = 3" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.toml"]  # nothing written


def test_two_workers_finish_a_resumed_study_at_exactly_the_total(tiny, settings, monkeypatch):
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    first = run_sweep(tiny, settings, trials=2)  # sequential: baseline + 1
    assert first.trials_done == 2
    summary = run_sweep(tiny, settings, trials=7, workers=2)
    assert summary.trials_done == 7 and summary.trials_run == 5

    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert counted_trials(study) == 7 and len(study.trials) == 7  # none extra, none lost
    assert sorted(t.number for t in study.trials) == list(range(7))

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'sweep'")
    assert len(parents) == 2  # one per invocation
    second = max(parents, key=lambda run: run.info.start_time)
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{second.info.run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [2, 3, 4, 5, 6]
    assert all(r.info.status == "FINISHED" for r in children)
    assert second.info.status == "FINISHED" and second.data.metrics["trials_done"] == 7
    by_number = {t.number: t for t in study.trials}
    for run in children:
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert trial.value == pytest.approx(run.data.metrics["selected_val_loss"])


def test_workers_each_training_populations_end_at_exactly_the_total(tiny, settings, monkeypatch):
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    # 7 trials, populations of 3, 2 processes: the last population is cut to what is left.
    summary = run_sweep(tiny, settings, trials=7, workers=2, population=3)
    assert summary.trials_done == 7 and summary.trials_run == 7

    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert counted_trials(study) == 7 and sorted(t.number for t in study.trials) == list(range(7))
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(7))
    by_number = {t.number: t for t in study.trials}
    for run in children:  # each member is its own trial run, linked both ways
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert trial.value == pytest.approx(run.data.metrics["selected_val_loss"])


def test_a_worker_that_starts_after_the_study_is_claimed_opens_nothing(tiny, tmp_path, data_cache):
    context = multiprocessing.get_context("spawn")
    stop, ran = context.Event(), context.Value("i", 0)
    stop.set()  # what the main process does once nothing is left to claim
    threads = torch.get_num_threads()
    workers.work(tiny, local_settings(tmp_path, data_cache), 3, "parent", ran, stop, 1)
    # No storage, tracking database or artifact folder opened, no trial run, no threads changed.
    assert list(tmp_path.iterdir()) == [] and ran.value == 0
    assert torch.get_num_threads() == threads


def test_one_and_two_workers_run_the_same_study(
    tiny, tmp_path, data_cache, mlflow_template, monkeypatch
):
    """Every process opens the study through `open_study`: the experiment's pruner (here: off)
    and sampler seed rule. With the pruner off no trial is pruned in either mode, and TPE's
    random start-up trials (the first 10) get the same parameters, and so the same values."""
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    real_loop = workers.trial_loop

    def after_a_worker_claimed(share, population, should_stop):
        # The main process waits for the second worker's first claim, so both run trials
        # however slowly the worker starts (the old bug showed only in a worker's trials).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            owners = [t.user_attrs.get(OWNER_ATTR) or {} for t in share.study.get_trials()]
            if any(owner.get("pid") not in (None, os.getpid()) for owner in owners):
                break
            time.sleep(0.2)
        real_loop(share, population, should_stop)

    exp = tiny.with_values({"train.max_epochs": 6, "sweep.pruner.enabled": False})
    studies = {}
    for count in (1, 2):
        root = tmp_path / f"workers-{count}"
        root.mkdir()
        shutil.copyfile(mlflow_template, root / "mlflow.db")
        settings = local_settings(root, data_cache)
        if count == 2:
            monkeypatch.setattr(workers, "trial_loop", after_a_worker_claimed)
        assert run_sweep(exp, settings, trials=10, workers=count).trials_done == 10
        study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
        studies[count] = {t.number: t for t in study.trials}
    pids = {t.user_attrs[OWNER_ATTR]["pid"] for t in studies[2].values()}
    assert len(pids) == 2  # both processes ran trials
    for count, trials in studies.items():
        assert sorted(trials) == list(range(10))
        states = {t.state for t in trials.values()}
        assert states == {optuna.trial.TrialState.COMPLETE}, (count, states)
    for number in range(10):  # all inside TPE's random start-up (n_startup_trials = 10)
        one, two = studies[1][number], studies[2][number]
        assert one.params == two.params, number
        assert one.value == pytest.approx(two.value, rel=1e-6), number  # 1 torch thread each


def test_a_workers_end_is_told_as_it_happened():
    """Issue 13, 8: "tracebacks printed above" was said of a worker killed by SIGKILL."""
    assert how_it_ended(-9) == "was killed by SIGKILL"
    assert how_it_ended(-15) == "was killed by SIGTERM"
    assert how_it_ended(1) == "exited 1 (its traceback is printed above)"
    assert how_it_ended(2) == "exited 2"
