"""The claim protocol's heartbeat (sweep/claim.py): what another worker's recovery sees."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from studylib.sweep.claim import heartbeat


def test_held_trials_keep_beating_and_the_rest_go_stale(tmp_path):
    """Only what `held()` names gets a heartbeat: a trial dropped from it is stale after the
    grace period and another worker's recovery fails it; the held one stays RUNNING."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2
    )
    study = optuna.create_study(storage=storage)
    kept, dropped = study.ask(), study.ask()
    with heartbeat(storage, study, lambda: [kept.number, dropped.number]):
        time.sleep(1.2)
    with heartbeat(storage, study, lambda: [kept.number]):
        time.sleep(3.5)  # `dropped` last beat about 1 s in: now older than the 2 s grace
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[kept.number] == TrialState.RUNNING
    assert states[dropped.number] == TrialState.FAIL


def test_a_claimed_trial_beats_at_once_so_a_worker_dead_before_its_first_interval_is_seen(
    tmp_path,
):
    """Optuna never counts a trial without any heartbeat as stale: a worker killed before its
    heartbeat thread's first interval would leave its trial RUNNING for good. `beat_now` at the
    claim records the first one."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=5, grace_period=1
    )
    study = optuna.create_study(storage=storage)
    silent, claimed = study.ask(), study.ask()
    with heartbeat(storage, study, lambda: []) as beat_now:
        beat_now([claimed.number])  # then the worker "dies": no interval has passed
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[claimed.number] == TrialState.FAIL
    assert states[silent.number] == TrialState.RUNNING  # never beat: Optuna cannot tell
