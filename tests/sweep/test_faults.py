"""Faults end to end with real worker processes (`python -m studylib sweep`), one machine.

Each test runs a scenario of `make faults` (bench/faults.py) in a temporary folder; a
scenario's checks are listed in `outcome.failures` when they do not hold.
"""

from __future__ import annotations

import pytest

from bench import faults


def explain(outcome: faults.Outcome) -> str:
    return f"{outcome.scenario}: {outcome.observed}; failed: {outcome.failures}"


@pytest.mark.slow  # two minutes on two cores: CI runs it through make test-slow
def test_kill9_sigint_sigterm_mid_trial_then_resume(tmp_path):
    """kill -9, then SIGINT, then SIGTERM, each mid-trial; each resume recovers."""
    outcomes = faults.interruptions(tmp_path)
    assert [o.numbers["exit"] for o in outcomes] == [-9, 130, 143]
    for outcome in outcomes:
        assert outcome.ok, explain(outcome)
        assert outcome.lost == 0
        assert outcome.numbers["done"] == 7  # the requested total, retries included
        assert outcome.numbers["retry"] is not None
    assert outcomes[0].numbers["completed_before"] >= 1  # there was something to lose


@pytest.mark.slow  # about a minute each: CI runs them through make test-slow
@pytest.mark.parametrize(("workers", "population"), [(1, 3), (2, 2)])
def test_kill9_mid_population_then_resume(tmp_path, workers, population):
    """One claim protocol for populations too: a killed member is failed and run again."""
    outcome = faults.population_kill(tmp_path, workers=workers, population=population)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["killed"] and outcome.numbers["completed_before"] >= population
    assert outcome.numbers["done"] == 4 * workers * population


@pytest.mark.parametrize("both", [False, True], ids=["writer", "writer-and-trainer"])
def test_kill9_of_the_writer_alone_or_with_its_trainer(tmp_path, both):
    """Issue 17: the records of finished trials are written by a process of their own; killing
    it (and its trainer) loses nothing told and leaves nothing RUNNING."""
    outcome = faults.writer_kill(tmp_path, both=both)
    assert outcome.ok, explain(outcome)
    assert outcome.lost == 0 and outcome.numbers["done"] == 6
    assert outcome.numbers["completed_before"] >= 2  # there was something to lose
    assert outcome.numbers["exit"] == (-9 if both else 0)


def test_four_workers_started_together_on_fresh_files(tmp_path):
    outcome = faults.workers_together(tmp_path, n=4, total=8)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["trials"] == 8 and outcome.numbers["runs"] == 8
    assert sum(outcome.numbers["ran"]) == 8  # each trial run by exactly one worker


@pytest.mark.slow
def test_tracking_server_stops_mid_sweep_then_resumes(tmp_path):
    """A real `mlflow server`, stopped mid-trial and started again (the in-process variant in
    test_sweep.py runs by default)."""
    outcome = faults.tracking_down(tmp_path)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["seconds_to_error"] < 60


@pytest.mark.slow
def test_diverging_mismatch_secrets_and_bad_files_as_processes(tmp_path):
    for scenario in (faults.diverging, faults.mismatch, faults.bad_input):
        folder = tmp_path / scenario.__name__
        folder.mkdir()
        outcome = scenario(folder)
        assert outcome.ok, explain(outcome)
    folder = tmp_path / "secrets"
    folder.mkdir()
    outcome = faults.secrets(folder, None, None)
    assert outcome.ok, explain(outcome)


# Issue 13: what a fault hunt broke, each as a real `studylib` process.


def test_resume_of_a_torn_journal_at_three_offsets(tmp_path):
    """1. A torn journal locked the study for good; now the next sweep repairs it (the torn
    bytes in a side file named in one line) and completes the study."""
    outcomes = faults.torn_journal(tmp_path)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert outcome.ok, explain(outcome)
        assert outcome.numbers["exit"] == 0 and outcome.numbers["done"] == 3


def test_a_killed_worker_does_not_fail_a_study_that_completes(tmp_path):
    """8. kill -9 of one of two --workers processes: exit 0, the worker named, no claim of a
    traceback that was never printed."""
    outcome = faults.worker_killed(tmp_path)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["exit"] == 0


def test_lost_mlflow_records_are_relogged_and_the_report_lists_every_trial(tmp_path):
    """8. A zero-byte mlflow.db and a trial that crashed before its run existed: the report
    lists the run-less trial; the next sweep re-logs every finished trial from Optuna."""
    outcome = faults.lost_records(tmp_path)
    assert outcome.ok, explain(outcome)


@pytest.mark.slow
def test_the_survivor_recovers_a_killed_sweeps_trial_while_it_trains(tmp_path):
    """7, on one machine: the watcher finds the dead sweep's trial while its own trains, and
    closes the dead sweep's parent run."""
    outcome = faults.survivor_recovers(tmp_path)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["while_training"]


@pytest.mark.slow
def test_a_disk_that_fills_mid_sweep_leaves_a_whole_journal(tmp_path):
    outcome = faults.disk_full(tmp_path)
    if outcome.lost is None:
        pytest.skip(outcome.observed)
    assert outcome.ok, explain(outcome)
