"""Stale trials, retries, mismatched resume and MLflow audits, in one process on real storage."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from studylib.cli import main
from studylib.locks import exclusive
from studylib.names import CONFIG_ATTR, FAILURE_ATTR, OWNER_ATTR, RUN_ID_ATTR
from studylib.sweep import claim, recovery, run_sweep
from studylib.sweep.recovery import Worker, audit_records, fail_dead_trials, queue_retries
from studylib.sweep.space import suggest
from studylib.sweep.storage import MAX_RETRIES, make_storage
from studylib.sweep.study import differences, settings_changes, study_settings
from studylib.tracking import Tracker


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_liveness_on_this_machine():
    me = Worker.current()
    assert me.on_this_machine() and not me.is_gone()
    assert Worker.from_attr(me.as_attr()) == me
    gone = Worker(me.host, me.boot, dead_pid(), "1")
    assert gone.is_gone()
    # Our pid, but a different start time: the id was reused by a younger process.
    assert Worker(me.host, me.boot, me.pid, str(int(me.started) + 1)).is_gone()
    # The machine was rebooted since the worker recorded itself.
    assert Worker(me.host, "another-boot", me.pid, me.started).is_gone()
    assert not Worker("elsewhere", me.boot, me.pid, me.started).on_this_machine()
    assert Worker.from_attr({"host": "h"}) is None and Worker.from_attr(None) is None


def _study(settings, name="s"):
    study = optuna.create_study(study_name=name, storage=make_storage(settings.storage))
    tracker = Tracker(settings.tracking_uri, name, settings.artifact_root)
    return study, tracker


def _running_trial(study, tracker, owner):
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("baseline", True)
    if owner is not None:
        trial.set_user_attr(OWNER_ATTR, owner.as_attr())
    run = tracker.start_run("t", tags={"studylib.role": "trial"})
    trial.set_user_attr(RUN_ID_ATTR, run.run_id)
    return trial, run


def test_dead_workers_trial_fails_and_is_queued_again(settings):
    study, tracker = _study(settings)
    me = Worker.current()
    dead, run = _running_trial(study, tracker, Worker(me.host, me.boot, dead_pid(), "1"))
    alive, _ = _running_trial(study, tracker, me)
    remote, _ = _running_trial(study, tracker, Worker("elsewhere", "b", 1, "1"))

    notes = fail_dead_trials(study, make_storage(settings.storage), tracker, heartbeat=False)
    assert len(notes) == 1 and notes[0].startswith(f"trial {dead.number}: its worker (pid")
    states = {t.number: t.state for t in study.trials}
    assert states == {
        dead.number: TrialState.FAIL,
        alive.number: TrialState.RUNNING,
        remote.number: TrialState.RUNNING,
    }
    mlflow_run = MlflowClient(settings.tracking_uri).get_run(run.run_id)
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.tags["studylib.status"] == "killed"
    assert "is gone" in mlflow_run.data.tags["studylib.reason"]

    assert queue_retries(study) == [
        f"trial {dead.number} (killed) queued again with the same parameters"
    ]
    assert queue_retries(study) == []  # once only
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    retry = waiting[0]
    assert retry.params == study.trials[dead.number].params
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.user_attrs == {"baseline": True}  # no stale owner, run id or failure
    # The next ask takes the retry, and suggest returns the same value.
    again = study.ask()
    assert again.number == retry.number
    assert again.suggest_float("x", 0.0, 1.0) == dead.params["x"]


def test_retries_stop_after_max_retries(settings):
    study, _ = _study(settings)
    history: list[int] = []
    for _ in range(MAX_RETRIES + 1):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr(FAILURE_ATTR, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        queued = queue_retries(study)
        history.append(len(queued))
        for t in study.get_trials(states=(TrialState.WAITING,)):
            assert t.system_attrs["retry_history"][0] == 0  # the chain keeps its origin
    assert history == [1] * MAX_RETRIES + [0]


def test_unowned_running_trial_fails_after_grace(settings, monkeypatch):
    study, tracker = _study(settings)
    trial, _ = _running_trial(study, tracker, owner=None)
    assert fail_dead_trials(study, make_storage(settings.storage), tracker, heartbeat=False) == []
    later = datetime.datetime.now() + datetime.timedelta(seconds=recovery.UNOWNED_GRACE_SECONDS + 1)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(recovery, "datetime", Clock)
    notes = fail_dead_trials(study, make_storage(settings.storage), tracker, heartbeat=False)
    assert len(notes) == 1 and "without a known worker" in notes[0]
    assert study.trials[trial.number].state == TrialState.FAIL


def test_audit_closes_runs_left_open_and_names_missing_ones(settings):
    study, tracker = _study(settings)
    trial, run = _running_trial(study, tracker, Worker.current())
    trial.set_user_attr(FAILURE_ATTR, "tracking")
    study.tell(trial, state=TrialState.FAIL)  # the server was down: the run stayed RUNNING
    no_run = study.ask()
    study.tell(no_run, 1.0)
    lacking = audit_records(study, tracker)
    assert lacking == [
        f"{trial.number} (run {run.run_id} left open, closed as FAILED)",
        f"{no_run.number} (no run)",
    ]
    closed = MlflowClient(settings.tracking_uri).get_run(run.run_id)
    assert closed.info.status == "FAILED"
    assert "tracking server was unreachable" in closed.data.tags["studylib.reason"]
    assert audit_records(study, tracker) == [f"{no_run.number} (no run)"]


def test_differences_name_each_changed_field():
    stored = {"train": {"lr": 0.001}, "sweep": {"search": {"dropout": {"low": 0, "high": 0.5}}}}
    current = {"train": {"lr": 0.01}, "sweep": {"search": {"dropout": {"low": 0, "high": 0.6}}}}
    assert differences(stored, current) == [
        "sweep.search.dropout.high 0.5 -> 0.6",
        "train.lr 0.001 -> 0.01",
    ]
    swapped = {"train": {"lr": 0.001}, "sweep": {"search": {"l2": {"low": 1e-6}}}}
    assert differences(stored, swapped) == [
        "sweep.search.dropout removed",
        "sweep.search.l2 added",
    ]
    assert differences(stored, stored) == []


def test_a_field_added_since_the_study_was_made_counts_only_off_its_default(tiny):
    """Upgrading studylib never refuses a resume: settings stored before a field existed are
    read with that field at its default; the same field set otherwise is a difference."""
    stored = study_settings(tiny)
    del stored["train"]["shuffle"]  # as a version before train.shuffle stored it
    assert settings_changes(stored, tiny) == []
    in_order = tiny.model_copy(update={"train": tiny.train.model_copy(update={"shuffle": False})})
    assert settings_changes(stored, in_order) == ["train.shuffle true -> false"]
    stored["train"]["lr"] = 0.5  # a real change is still named
    assert settings_changes(stored, tiny) == [f"train.lr 0.5 -> {json.dumps(tiny.train.lr)}"]


def test_resume_with_other_settings_is_refused_then_new_study(tiny, settings, capsys):
    run_sweep(tiny, settings, trials=1)
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    assert study.user_attrs[CONFIG_ATTR]["train"]["lr"] == tiny.train.lr
    changed = tiny.with_values({"train.lr": 0.01, "sweep.trials": 7})
    with pytest.raises(Exception, match=r"train\.lr 0\.003 -> 0\.01") as refused:
        run_sweep(changed, settings, trials=2)
    assert "sweep.trials" not in str(refused.value)  # the count may grow on resume
    assert len(study.trials) == 1
    # A new total alone is a resume, not a change.
    assert run_sweep(tiny.with_values({"sweep.trials": 9}), settings, trials=2).trials_done == 2

    summary = run_sweep(changed, settings, trials=1, new_study=True)
    assert summary.study_name == "tiny-v2"
    again = run_sweep(changed, settings, trials=2, new_study=True)
    assert again.study_name == "tiny-v2" and again.trials_run == 1
    assert "studylib: study tiny holds other settings" in capsys.readouterr().err
    names = optuna.get_all_study_names(make_storage(settings.storage))
    assert sorted(names) == ["tiny", "tiny-v2"]
    assert MlflowClient(settings.tracking_uri).get_experiment_by_name("tiny-v2") is not None


def test_cli_refuses_changed_resume_with_one_line(tmp_path, settings, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    body = (
        'name = "cli"\n[data]\nnum_train = 600\nnum_test = 200\ntrain_examples = 300\n'
        "[model]\nhidden = [16]\n[train]\nmax_epochs = 1\n[sweep]\ntrials = 1\n"
        "[sweep.search.dropout]\nlow = 0.0\nhigh = 0.5\n"
    )
    exp = tmp_path / "cli.toml"
    exp.write_text(body)
    args = ["sweep", str(exp), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    exp.write_text(body.replace("high = 0.5", "high = 0.6"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "sweep.search.dropout.high 0.5 -> 0.6" in err[0] and "--new-study" in err[0]


def test_journal_lock_excludes_other_holders(tmp_path):
    path = str(tmp_path / "optuna.journal")
    order = []

    def contender():
        with exclusive(path, "s"):
            order.append("contender")

    with exclusive(path, "s"):
        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(0.3)
        order.append("holder")
    thread.join(5)
    assert order == ["holder", "contender"]


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "optuna.journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from studylib.locks import exclusive\n"
            f"with exclusive({str(path)!r}, 's'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with exclusive(str(path), "s"):
        assert time.monotonic() - started < 5


def test_hostname_is_what_workers_record():
    assert Worker.current().host == socket.gethostname()


# ---------------------------------------------------------------------------------------------
# Issue 13: the watcher, parent runs judged by their owner, lost records re-logged


def test_the_watcher_recovers_a_dead_workers_trial_while_this_one_trains(settings, monkeypatch):
    """Survivors used to look for dead workers' trials only when their own trial ended (47 s
    on PostgreSQL); the watcher looks while trials train."""
    monkeypatch.setattr(claim, "WATCH_SECONDS", 0.05)
    study, tracker = _study(settings)
    me = Worker.current()
    dead, _ = _running_trial(study, tracker, Worker(me.host, me.boot, dead_pid(), "1"))
    mine, _ = _running_trial(study, tracker, me)  # "training" while the watcher runs
    storage = make_storage(settings.storage)
    with claim.watch(study, storage, settings, tracker):
        deadline = time.monotonic() + 30
        while study.get_trials(states=(TrialState.WAITING,)) == [] and time.monotonic() < deadline:
            time.sleep(0.05)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL and states[mine.number] == TrialState.RUNNING
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["failed_trial"] for t in retry] == [dead.number]


def _sweep_run(tracker, owner: dict) -> str:
    run = tracker.start_run("sweep", tags={"studylib.role": "sweep", OWNER_ATTR: json.dumps(owner)})
    return run.run_id


def test_a_parent_run_is_closed_only_when_its_owner_is_found_dead(settings):
    _, tracker = _study(settings)
    me = Worker.current()
    gone_here = Worker(me.host, me.boot, dead_pid(), "1")
    silent_elsewhere = Worker("elsewhere", "b", 7, "1")  # its heartbeat stopped
    alive_elsewhere = Worker("elsewhere", "b", 8, "1")
    ids = {
        "gone here": _sweep_run(tracker, gone_here.as_attr()),
        "silent elsewhere": _sweep_run(tracker, silent_elsewhere.as_attr()),
        "alive elsewhere": _sweep_run(tracker, alive_elsewhere.as_attr()),
        "alive here": _sweep_run(tracker, me.as_attr()),
        "a launcher's job": _sweep_run(tracker, {"job": "slurm:1234", "host": me.host}),
    }
    notes = recovery.close_dead_sweeps(tracker, {silent_elsewhere})
    assert len(notes) == 2
    client = MlflowClient(settings.tracking_uri)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "gone here": "KILLED",
        "silent elsewhere": "KILLED",
        "alive elsewhere": "RUNNING",
        "alive here": "RUNNING",
        "a launcher's job": "RUNNING",
    }
    reason = client.get_run(ids["silent elsewhere"]).data.tags["studylib.reason"]
    assert reason == "its worker (pid 7 on elsewhere) stopped sending heartbeats"


def test_finished_trials_without_a_run_are_relogged_from_optuna_once(tiny, settings):
    study, tracker = _study(settings, name="tiny")
    values = {}
    for value, pruned in ((0.5, False), (0.4, False), (None, True)):
        trial = study.ask()
        suggest(trial, tiny.sweep.search)  # every parameter of the search, as a sweep takes them
        for epoch in (1, 2, 3):
            trial.report(1.0 / epoch, epoch)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        for key, attr in (("best_epoch", 3), ("stopped_epoch", 3), ("test_acc", 0.7)):
            trial.set_user_attr(key, attr)
        trial.set_user_attr("selected_val_acc", 0.6)
        study.tell(trial, value)
        values[trial.number] = value
    crashed = study.ask()
    crashed.set_user_attr(FAILURE_ATTR, "crashed")
    crashed.set_user_attr("studylib.reason", "ValidationError: lr above 10")
    study.tell(crashed, state=TrialState.FAIL)
    assert audit_records(study, tracker) == [f"{n} (no run)" for n in range(4)]

    relogged = recovery.relog_missing(study, tracker, tiny, parent_id=None)
    assert relogged == [0, 1, 2, 3]
    assert recovery.relog_missing(study, tracker, tiny, parent_id=None) == []  # once only
    assert audit_records(study, tracker) == []
    client = MlflowClient(settings.tracking_uri)
    runs = {
        int(r.data.tags["optuna.trial_number"]): r
        for r in client.search_runs([tracker.experiment_id], "tags.`studylib.role` = 'trial'")
    }
    for number, value in values.items():
        run = runs[number]
        assert run.info.status == "FINISHED" and run.data.tags["studylib.status"] == "completed"
        assert run.data.metrics["selected_val_loss"] == value
        assert run.data.metrics["test_acc"] == 0.7 and run.data.metrics["best_val_loss"] == 1 / 3
        assert run.data.tags["studylib.relogged_from"] == "optuna"
        assert run.data.params["model.dropout"] == str(study.trials[number].params["dropout"])
        curve = client.get_metric_history(run.info.run_id, "val/loss")
        assert [(m.step, m.value) for m in curve] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert runs[2].data.tags["studylib.status"] == "pruned"
    assert runs[3].info.status == "FAILED" and runs[3].data.tags["studylib.status"] == "crashed"
    assert "lr above 10" in runs[3].data.tags["studylib.reason"]
