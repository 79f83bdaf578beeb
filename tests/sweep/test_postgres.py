"""Many machines: Optuna on PostgreSQL, MLflow on a tracking server backed by PostgreSQL.

Every test makes throwaway databases on the PostgreSQL at 127.0.0.1:5432 (or
$STUDYLIB_TEST_POSTGRES) and drops them afterwards; without a reachable server they skip and
say why. Workers are separate `python -m studylib sweep` processes.
"""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from bench import faults
from studylib.locks import exclusive
from studylib.sweep.storage import make_storage

UNREACHABLE = faults.postgres_unreachable()
pytestmark = pytest.mark.skipif(UNREACHABLE is not None, reason=UNREACHABLE or "")


def explain(outcome: faults.Outcome) -> str:
    return f"{outcome.scenario}: {outcome.observed}; failed: {outcome.failures}"


@pytest.mark.slow  # CI runs it through make test-slow
def test_four_workers_five_trials_each_give_twenty(tmp_path):
    """4 workers started together, 20 trials requested: exactly 20 trials, 20 runs on a real
    `mlflow server` (PostgreSQL backend, free loopback port), no password anywhere."""
    outcome = faults.postgres_workers(tmp_path, n=4, per_worker=5)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["trials"] == 20 and outcome.numbers["runs"] == 20
    assert sum(outcome.numbers["ran"]) == 20


def test_killed_workers_trial_is_recovered_within_three_heartbeats_while_others_train(tmp_path):
    """Issue 13, 7: a survivor used to look for stale trials only when its own trial ended
    (47 s after the kill with --heartbeat 2); its watcher now fails and queues the dead one's
    trial within three heartbeats while it trains, and closes the dead sweep's parent run."""
    outcome = faults.postgres_heartbeat(tmp_path, heartbeat=2)
    assert outcome.ok, explain(outcome)
    assert outcome.numbers["seconds"] <= 6 and outcome.numbers["while_training"]
    assert outcome.numbers["retry"] is not None and outcome.numbers["done"] == 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_advisory_lock_serializes_and_the_study_is_created_once(tmp_path):
    with faults.postgres_database("lock") as url:
        order = []

        def contender():
            with exclusive(url, "study:s"):
                order.append("contender")

        with exclusive(url, "study:s"):
            thread = threading.Thread(target=contender)
            thread.start()
            thread.join(0.5)
            order.append("holder")
        thread.join(10)
        assert order == ["holder", "contender"]

        storage = make_storage(url, heartbeat_seconds=1)
        study = optuna.create_study(study_name="s", storage=storage)
        trial = study.ask()
        study.tell(trial, 1.0)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE]
        assert isinstance(storage, optuna.storages.RDBStorage)
        assert storage.get_heartbeat_interval() == 1
