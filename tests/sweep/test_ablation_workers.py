"""An ablation's units through the claim protocol: `--workers 2` gives what one process gives."""

from __future__ import annotations

import os
import shutil
import signal
import time

import optuna
import pytest
from conftest import local_settings
from mlflow import MlflowClient

from bench.faults import start, sweep_argv, wait_until, write_experiment
from studylib.config import ARMS, load_experiment
from studylib.names import ARM_TAG, FAILURE_ATTR, OWNER_ATTR, ROLE_TAG
from studylib.sweep import ablation, workers
from studylib.sweep.ablation import (
    ablation_steps,
    arm_tuning,
    run_ablation,
)
from studylib.sweep.storage import make_storage
from studylib.sweep.study import counted_trials


def arm_figures(
    tracking_uri: str, finished_only: bool = False
) -> dict[tuple[str, str], tuple[float, float, str]]:
    """(arm, seed) -> (test_acc, selected_val_loss, status) of the arm runs, each cell once."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'arm'")
    if finished_only:
        runs = [r for r in runs if r.info.status == "FINISHED"]
    cells = [(r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"]) for r in runs]
    assert len(cells) == len(set(cells))  # each (arm, seed) once
    return {
        cell: (r.data.metrics["test_acc"], r.data.metrics["selected_val_loss"], r.info.status)
        for cell, r in zip(cells, runs, strict=True)
    }


def test_two_workers_run_the_same_ablation_as_one(
    tiny_ablation, tmp_path, data_cache, mlflow_template, monkeypatch
):
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    real_loop = workers.trial_loop

    def after_a_worker_claimed(share, population, should_stop):
        # The main process waits for the second worker's first claim, so both run units.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            owners = [t.user_attrs.get(OWNER_ATTR) or {} for t in share.study.get_trials()]
            if any(owner.get("pid") not in (None, os.getpid()) for owner in owners):
                break
            time.sleep(0.2)
        real_loop(share, population, should_stop)

    exp = tiny_ablation
    results = {}
    for count in (1, 2):
        root = tmp_path / f"workers-{count}"
        root.mkdir()
        shutil.copyfile(mlflow_template, root / "mlflow.db")
        settings = local_settings(root, data_cache)
        if count == 2:
            monkeypatch.setattr(workers, "trial_loop", after_a_worker_claimed)
        summary = run_ablation(exp, settings, workers=count)
        assert summary.runs_done == len(ARMS) * 2 and summary.runs_skipped == 0
        storage = make_storage(settings.storage)
        ledger = optuna.load_study(study_name=f"{exp.name}.ablation", storage=storage)
        steps = ablation_steps(exp)
        assert counted_trials(ledger) == len(steps) == len(ledger.trials)
        assert {t.state for t in ledger.trials} == {optuna.trial.TrialState.COMPLETE}
        pids = {t.user_attrs[OWNER_ATTR]["pid"] for t in ledger.trials}
        assert len(pids) == count  # every process ran units
        for arm in ("l2", "all"):  # each tuning study holds exactly its budget
            tuning = optuna.load_study(study_name=f"{exp.name}.ablation.{arm}", storage=storage)
            budget = arm_tuning(exp, arm).budget
            assert len(tuning.trials) == budget == counted_trials(tuning)
        figures = arm_figures(settings.tracking_uri)
        assert set(figures) == {(arm, seed) for arm in ARMS for seed in ("0", "1")}
        assert {status for *_, status in figures.values()} == {"FINISHED"}
        results[count] = (summary.strengths, summary.nuisance, figures)
    one, two = results[1], results[2]
    assert one[0] == two[0] and one[1] == two[1]  # the same strengths, tuned alike
    assert one[2] == two[2]  # the same figures, exactly (one torch thread each)


ABLATION = """
[sweep.search.l2]
low = 1e-6
high = 1e-2
log = true
allow_zero = true
[ablation]
seeds = [0, 1]
arms = ["baseline", "l2", "all"]
tune_trials = 3
[ablation.strength]
dropout = 0.3
l1 = 1e-3
weight_decay = 0.05
patience = 1
[ablation.nuisance.lr]
low = 1e-3
high = 1e-2
log = true
"""


def test_kill9_of_a_worker_mid_ablation_then_resume(tmp_path):
    """A real `sweep --workers 2` of an ablation; the worker process (not the main one) killed
    mid-unit: its unit is failed and run again by the main process (a tuning resumed, its dead
    trial failed and run again with the same parameters); a resume then has nothing to do.
    Every (arm, seed) ends FINISHED exactly once; nothing is left RUNNING anywhere."""
    path = write_experiment(tmp_path, epochs=200, trials=0, extra=ABLATION)
    exp = load_experiment(path)
    storage = str(tmp_path / "optuna.journal")
    proc = start(tmp_path, sweep_argv(path, "--workers", "2"))

    def a_worker_mid_unit():
        if not (tmp_path / "optuna.journal").exists():
            return None
        try:
            ledger = optuna.load_study(
                study_name=f"{exp.name}.ablation", storage=make_storage(storage)
            )
        except KeyError:
            return None
        return next(
            (
                t
                for t in ledger.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if (t.user_attrs.get(OWNER_ATTR) or {}).get("pid") not in (None, proc.pid)
            ),
            None,
        )

    victim = wait_until(a_worker_mid_unit, 120, "the worker process mid-unit", every=0.05)
    os.kill(victim.user_attrs[OWNER_ATTR]["pid"], signal.SIGKILL)
    code = proc.wait(600)
    assert code == 0, proc.stderr()[-2000:]
    again = start(tmp_path, sweep_argv(path))  # the resume: nothing left to run
    assert again.wait(600) == 0, again.stderr()[-2000:]
    assert "0 runs (6 already done" in again.stdout(), again.stdout()

    optuna_storage = make_storage(storage)
    ledger = optuna.load_study(study_name=f"{exp.name}.ablation", storage=optuna_storage)
    steps = ablation_steps(exp)
    assert counted_trials(ledger) == len(steps)
    states = [t.state for t in ledger.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    killed = [t for t in ledger.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in killed] == [victim.number]
    assert killed[0].user_attrs[FAILURE_ATTR] == "killed"
    for arm in ("baseline", "l2", "all"):
        tuning = optuna.load_study(study_name=f"{exp.name}.ablation.{arm}", storage=optuna_storage)
        assert counted_trials(tuning) == arm_tuning(exp, arm).budget
        assert all(t.state != optuna.trial.TrialState.RUNNING for t in tuning.trials)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(exp.name)
    every = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in every if r.info.status == "RUNNING"] == []
    arms = [r for r in every if r.data.tags.get("studylib.role") == "arm"]
    finished = [
        (r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"])
        for r in arms
        if r.info.status == "FINISHED"
    ]
    assert sorted(finished) == sorted(
        (arm, seed) for arm in ("baseline", "l2", "all") for seed in ("0", "1")
    )


def test_a_unit_that_crashed_is_queued_again_by_the_next_invocation(
    tiny_ablation, settings, monkeypatch
):
    """A crash is not retried (it would crash again), so the sweep fails; the next invocation
    finds the unit held by no trial and queues it again: the ledger ends at exactly its units."""
    exp = tiny_ablation.with_values({"ablation.arms": ["baseline", "l2"], "ablation.seeds": [0]})
    real = ablation.run_trial

    def crash_the_l2_arm(cfg, splits, tracker, **kwargs):
        if kwargs["tags"].get(ROLE_TAG) == "arm" and kwargs["tags"][ARM_TAG] == "l2":
            raise RuntimeError("boom")
        return real(cfg, splits, tracker, **kwargs)

    monkeypatch.setattr(ablation, "run_trial", crash_the_l2_arm)
    with pytest.raises(RuntimeError, match="boom"):
        run_ablation(exp, settings)
    monkeypatch.setattr(ablation, "run_trial", real)
    summary = run_ablation(exp, settings)
    assert (summary.runs_done, summary.runs_skipped) == (1, 1)
    ledger = optuna.load_study(
        study_name=f"{exp.name}.ablation", storage=make_storage(settings.storage)
    )
    assert counted_trials(ledger) == len(ablation_steps(exp)) == 3
    failed = [t for t in ledger.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs[FAILURE_ATTR] for t in failed] == ["crashed"]
    figures = arm_figures(settings.tracking_uri, finished_only=True)
    assert set(figures) == {("baseline", "0"), ("l2", "0")}
