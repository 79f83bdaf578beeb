"""The launchers against real engines on this machine: a one-node Slurm (job arrays through
submitit), Ray (started by the launcher on 127.0.0.1, or a head from .ci/engines/ray-up.sh),
PostgreSQL on 127.0.0.1:5432 as the Optuna storage and an MLflow server on a free loopback
port, both with a password in their URLs that must show nowhere.

Slurm is brought up by .ci/engines/slurm-up.sh (Debian's slurmctld, slurmd, munge; installed
with apt when missing; KillWait 5 s) and stopped by slurm-down.sh --purge when the session
ends; every Ray this module starts is stopped by its test. A missing engine skips its tests
and says why, unless STUDYLIB_REQUIRE_ENGINES=1 (`make test-engines`, which CI runs): then it
fails them, so CI cannot pass without them. Marked `engines`: not in the default `make test`.

Wall times of the 8-trial sweeps go to $STUDYLIB_ENGINE_TIMES (JSON lines) when it is set:
the README's figure comes from there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench import faults
from studylib.config import load_experiment
from studylib.names import (
    FAILURE_ATTR,
    LAUNCHER_TAG,
    OWNER_ATTR,
    REASON_ATTR,
    RUN_ID_ATTR,
    STRENGTHS_TAG,
)
from studylib.sweep.ablation import ablation_steps, arm_tuning
from studylib.sweep.owners import JobOwner, slurm_task_states
from studylib.sweep.recovery import close_dead_sweeps
from studylib.tracking import Tracker

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[3]
ENGINES = ROOT / ".ci" / "engines"
REQUIRED = os.environ.get("STUDYLIB_REQUIRE_ENGINES") == "1"


def missing(reason: str) -> None:
    """Skip, or fail where the engines are required."""
    if REQUIRED:
        pytest.fail(f"{reason} (STUDYLIB_REQUIRE_ENGINES=1: the engine tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[Path]:
    """A one-node Slurm cluster on this machine for the session; its state folder."""
    if importlib.util.find_spec("submitit") is None:
        missing("submitit is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        missing("a one-node Slurm needs root (slurmctld, slurmd, munged)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        missing("no Slurm here and no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_KILLWAIT": "5"}
    up = subprocess.run(
        ["bash", str(ENGINES / "slurm-up.sh"), str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if up.returncode != 0:
        missing(f"slurm-up.sh failed: {(up.stderr or up.stdout)[-500:]}")
    try:
        yield state
    finally:
        subprocess.run(
            ["bash", str(ENGINES / "slurm-down.sh"), str(state), "--purge"],
            capture_output=True,
            timeout=300,
        )


@pytest.fixture(scope="session")
def ray_installed() -> None:
    if importlib.util.find_spec("ray") is None:
        missing("Ray is not installed (pip install -e '.[ray]')")


@dataclass
class Stack:
    """Throwaway PostgreSQL databases (a password in the storage URL: trust authentication
    ignores it, and it shows whether studylib leaks it) and an MLflow server on loopback."""

    storage: str
    tracking_uri: str  # with a password
    server_url: str  # without
    folder: Path


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    reason = faults.postgres_unreachable()
    if reason:
        missing(reason)
    with (
        faults.postgres_database("launch", faults.SECRET) as storage,
        faults.postgres_database("mlflow") as backend,
        faults.tracking_server(tmp_path, backend) as server,
    ):
        tracking = server.url.replace("http://", f"http://studylib:{faults.SECRET}@")
        yield Stack(storage, tracking, server.url, tmp_path)


# ---------------------------------------------------------------------------------------------
# Helpers

TRIALS = 8
SHORT_EPOCHS = 10  # an 8-trial sweep in seconds
# Trials long enough that a worker stopped "mid-trial" is stopped while it trains, not in the
# milliseconds between closing its MLflow run and telling Optuna (on a loaded machine the test
# may look at a trial seconds before it acts on it).
LONG_EPOCHS = 150
EARLY_EPOCHS = 30  # a trial is stopped only while it has reported at most this many epochs
SECRET = faults.SECRET


def launch(stack: Stack, exp: Path, *flags: str) -> faults.Proc:
    """`studylib sweep` with a launcher, as a user runs it (its own process)."""
    argv = faults.sweep_argv(
        exp, "--storage", stack.storage, "--tracking-uri", stack.tracking_uri, *flags
    )
    return faults.start(stack.folder, argv)


def record_time(launcher: str, seconds: float) -> None:
    path = os.environ.get("STUDYLIB_ENGINE_TIMES")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            line = {"launcher": launcher, "trials": TRIALS, "epochs": SHORT_EPOCHS}
            line.update(seconds=round(seconds, 1), load=os.getloadavg()[0])
            out.write(json.dumps(line) + "\n")


def runs_of(stack: Stack, role: str) -> list:
    client = MlflowClient(stack.server_url)
    experiment = client.get_experiment_by_name(faults.STUDY)
    return client.search_runs([experiment.experiment_id], f"tags.`studylib.role` = '{role}'")


def check_complete_sweep(stack: Stack, proc: faults.Proc) -> None:
    """Exactly TRIALS trials, all COMPLETE; TRIALS trial runs, all FINISHED; one parent run,
    FINISHED; no password printed."""
    assert proc.wait(900) == 0, proc.stderr()[-3000:]
    trials = faults.trials_of(stack.storage)
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    runs = runs_of(stack, "trial")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == list(range(TRIALS))
    assert all(r.info.status == "FINISHED" for r in runs)
    (parent,) = runs_of(stack, "sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_done"] == TRIALS
    assert f"study faults: {TRIALS} trials ({TRIALS} run now" in proc.stdout()
    assert SECRET not in proc.stdout() + proc.stderr()


ABLATION = """
[sweep.search.l2]
low = 1e-6
high = 1e-2
log = true
allow_zero = true
[ablation]
seeds = [0, 1]
arms = ["baseline", "l2", "all"]
tune_trials = 2
[ablation.strength]
dropout = 0.3
l1 = 1e-3
weight_decay = 0.05
patience = 1
"""
ARMS_X_SEEDS = 6


def check_complete_ablation(stack: Stack, proc: faults.Proc, path: Path) -> None:
    """The [ablation] launched after the sweep: every unit of its ledger COMPLETE once, each
    tuning study at exactly its budget, each (arm, seed) one FINISHED arm run, every tuning
    run FINISHED, its parent run FINISHED with the strengths."""
    exp = load_experiment(path)
    steps = ablation_steps(exp)
    units = faults.trials_of(stack.storage, f"{exp.name}.ablation")
    assert len(units) == len(steps) and all(t.state == TrialState.COMPLETE for t in units)
    tuned = [arm for arm in exp.ablation.arms if arm_tuning(exp, arm).space]
    assert tuned == ["l2", "all"]
    for arm in tuned:
        tuning = faults.trials_of(stack.storage, f"{exp.name}.ablation.{arm}")
        assert len(tuning) == arm_tuning(exp, arm).budget
        assert all(t.state == TrialState.COMPLETE for t in tuning)
    arms = runs_of(stack, "arm")
    cells = [(r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"]) for r in arms]
    assert len(cells) == len(set(cells)) == ARMS_X_SEEDS
    assert all(r.info.status == "FINISHED" for r in arms)
    tunes = runs_of(stack, "tune")
    assert len(tunes) == 4 and all(r.info.status == "FINISHED" for r in tunes)
    (parent,) = runs_of(stack, "ablation")
    assert parent.info.status == "FINISHED"
    assert set(json.loads(parent.data.tags[STRENGTHS_TAG])) == set(exp.ablation.arms)
    assert f"ablation of faults: {len(steps)} units done ({len(steps)} run now" in proc.stdout()


def check_recovered(stack: Stack, victim: int, failure: str, reason: str) -> None:
    """After one worker was stopped mid-trial: the study holds TRIALS counted trials; the
    victim is FAIL (`failure`, `reason`) with its run KILLED; it ran again with the same
    parameters; every other run FINISHED: TRIALS + 1 trials and runs, nothing lost."""
    trials = {t.number: t for t in faults.trials_of(stack.storage)}
    killed = trials[victim]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs[FAILURE_ATTR] == failure
    assert reason in killed.user_attrs[REASON_ATTR]
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1
    assert retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
    assert faults.counted(list(trials.values())) == TRIALS
    assert len(trials) == TRIALS + 1
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    runs = {r.info.run_id: r for r in runs_of(stack, "trial")}
    assert len(runs) == TRIALS + 1
    assert runs[killed.user_attrs[RUN_ID_ATTR]].info.status == "KILLED"
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(finished) == TRIALS


def mid_trial(stack: Stack, unasked: int = 0):
    """A trial RUNNING early in its training (1 to EARLY_EPOCHS epochs reported) once another
    completed. Its MLflow run may not be linked yet: the worker's writer creates it off the
    training path, and under load that can come after epoch EARLY_EPOCHS (two tests waited
    600 s for a trial that had both); a stopped trial's run is created and closed KILLED by
    its writer on the way out, which the tests check. `unasked`: at least this many trials not
    asked yet, so that the study cannot end while the test looks at it."""

    def early():
        trials = faults.trials_of(stack.storage)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return None
        if len(trials) > TRIALS - unasked:
            return None
        for t in trials:
            if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) <= EARLY_EPOCHS:
                return t
        return None

    return faults.wait_until(early, 600, "a trial early in its training", every=0.05)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def slurm_task_of(trial) -> str:
    """The array task ("12_1") whose worker runs `trial` (read from its process)."""
    env = environ_of(trial.user_attrs[OWNER_ATTR]["pid"])
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def no_slurm_job_left(job: str) -> bool:
    states = slurm_task_states(job) or {}
    return all(s in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT") for s in states.values())


def secrets_nowhere_in(folder: Path) -> list[str]:
    return [
        str(path)
        for path in folder.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]


# ---------------------------------------------------------------------------------------------
# Slurm


def test_slurm_sweep_of_8_trials_on_2_tasks(slurm, stack):
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS)
    started = time.monotonic()
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine")
    check_complete_sweep(stack, proc)
    record_time("slurm --jobs 2", time.monotonic() - started)
    (parent,) = runs_of(stack, "sweep")
    owner = JobOwner.from_attr(json.loads(parent.data.tags[OWNER_ATTR]))
    assert owner is not None and owner.engine == "slurm"
    assert parent.data.tags[LAUNCHER_TAG].startswith(f"Slurm job {owner.job} (2 tasks)")
    # The password reached the workers through the job's environment, and nothing else:
    # not submitit's pickles, the sbatch script, the logs, squeue or scontrol.
    logs = stack.folder / "slurm-logs"
    assert {f"{owner.job}_0", f"{owner.job}_1"} <= {p.name for p in logs.iterdir()}
    assert secrets_nowhere_in(logs) == []
    shown = (
        subprocess.run(
            ["scontrol", "show", "job", owner.job], capture_output=True, text=True
        ).stdout
        + subprocess.run(
            ["squeue", "-o", "%all", "--states=all"], capture_output=True, text=True
        ).stdout
    )
    assert SECRET not in shown


def test_slurm_sweep_and_ablation_on_2_tasks(slurm, stack):
    """A sweep and an [ablation]: both launched as job arrays, the ablation's units (tune an
    arm, run an arm on a seed) claimed by the tasks like trials; every count exact."""
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS, extra=ABLATION)
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine")
    check_complete_sweep(stack, proc)
    check_complete_ablation(stack, proc, exp)


def test_slurm_scancel_of_a_task_mid_trial_loses_nothing(slurm, stack):
    """`scancel` of one array task while it trains: SIGTERM closes its trial (FAIL, run KILLED),
    the other task runs it again, the study ends complete and the command exits 0."""
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine")
    victim = mid_trial(stack)
    task = slurm_task_of(victim)
    subprocess.run(["scancel", task], check=True)
    assert proc.wait(900) == 0, proc.stderr()[-3000:]
    check_recovered(stack, victim.number, "interrupted", "interrupted by SIGTERM")
    assert f"task {task} stopped by SIGTERM" in proc.stderr()
    (parent,) = runs_of(stack, "sweep")
    assert parent.info.status == "FINISHED"


def test_slurm_usr2_closes_the_trial_and_requeues_the_task(slurm, stack):
    """What the time limit's warning (sbatch --signal=USR2@90) or a preemption sends: the trial
    is closed and runs again; the task puts itself back in the queue."""
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine")
    victim = mid_trial(stack)
    task = slurm_task_of(victim)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    assert proc.wait(900) == 0, proc.stderr()[-3000:]
    check_recovered(stack, victim.number, "interrupted", "interrupted by SIGUSR2")
    result = stack.folder / "slurm-logs" / task / f"{task}_0_result.pkl"
    with open(result, "rb") as handle:
        outcome, report = pickle.load(handle)
    assert outcome == "success" and report["stopped_by"] == "SIGUSR2" and report["requeued"]


def test_slurm_ctrl_c_of_the_waiting_command_cancels_its_job(slurm, stack):
    """The waiting command is the job's handle: SIGINT cancels the array (each task closes the
    trial it is on), closes the parent run KILLED and exits 130; a rerun resumes."""
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine")
    victim = mid_trial(stack)
    job = slurm_task_of(victim).split("_")[0]
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130, proc.stderr()[-3000:]
    assert "stopped by SIGINT" in proc.stderr() and "Traceback" not in proc.stderr()
    assert no_slurm_job_left(job)
    trials = faults.trials_of(stack.storage)
    closed = [t for t in trials if t.state == TrialState.FAIL]
    assert closed and all(t.user_attrs[FAILURE_ATTR] == "interrupted" for t in closed)
    # Every trial a task was training is closed. One a task had claimed in the instant before
    # naming itself its owner (SIGTERM between Optuna's ask and the owner attribute) stays
    # RUNNING without an owner; the next sweep fails and retries it after
    # recovery.UNOWNED_GRACE_SECONDS (tests/sweep/test_recovery.py).
    left = [t for t in trials if t.state == TrialState.RUNNING]
    assert all(OWNER_ATTR not in t.user_attrs for t in left), left
    (parent,) = runs_of(stack, "sweep")
    assert parent.info.status == "KILLED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs_of(stack, "trial"))


def test_slurm_detached_parent_is_not_closed_while_its_job_lives(slurm, stack):
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "slurm", "--jobs", "2", "--one-machine", "--detach")
    assert proc.wait(300) == 0, proc.stderr()[-3000:]
    assert "submitted; watch: Slurm job" in proc.stdout() and "squeue -j" in proc.stdout()
    (parent,) = runs_of(stack, "sweep")
    owner = JobOwner.from_attr(json.loads(parent.data.tags[OWNER_ATTR]))
    assert owner is not None and owner.state() == "alive"
    mid_trial(stack)  # the job's workers train while the command that submitted them is gone
    tracker = Tracker(stack.server_url, faults.STUDY)
    assert close_dead_sweeps(tracker) == []
    assert tracker.run_states("sweep")[parent.info.run_id] == "RUNNING"
    subprocess.run(["scancel", owner.job], check=True)
    faults.wait_until(lambda: no_slurm_job_left(owner.job), 120, "the job to end")
    assert owner.state() == "gone"
    notes = close_dead_sweeps(tracker)
    assert notes and f"its Slurm job {owner.job} on cluster" in notes[0]
    assert tracker.run_states("sweep")[parent.info.run_id] == "KILLED"


# ---------------------------------------------------------------------------------------------
# Ray


def no_ray_left(before: set[int]) -> list[int]:
    """gcs_server / raylet processes that were not there before the test."""
    found = subprocess.run(["pgrep", "-x", "gcs_server|raylet"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split() if int(p) not in before]


def ray_processes() -> set[int]:
    found = subprocess.run(["pgrep", "-x", "gcs_server|raylet"], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def family_of(pids: set[int]) -> set[int]:
    """`pids` and every process descending from them."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return family


def listeners_of(pids: set[int]) -> list[str]:
    """The TCP addresses these processes listen on (ss -ltnp)."""
    found = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    return [
        line.split()[3] for line in found.splitlines() if any(f"pid={pid}," in line for pid in pids)
    ]


def loopback(bind: str) -> bool:
    return bind.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))


def test_ray_sweep_of_8_trials_on_2_workers(ray_installed, stack):
    """No address: the launcher starts Ray here, every server of it on 127.0.0.1, runs 2
    worker tasks, and stops Ray."""
    before = ray_processes()
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS)
    started, started_wall = time.monotonic(), time.time()
    proc = launch(stack, exp, "--launcher", "ray", "--jobs", "2")
    heads = faults.wait_until(lambda: ray_processes() - before, 300, "Ray to start")
    time.sleep(3)  # its agents and workers open their ports
    binds = listeners_of(family_of(heads))
    check_complete_sweep(stack, proc)
    record_time("ray --jobs 2", time.monotonic() - started)
    assert binds and all(loopback(bind) for bind in binds), binds
    # The password went through Ray's object store: not into any log of the session.
    sessions = [d for d in Path("/tmp/ray").glob("session_2*") if d.stat().st_mtime >= started_wall]
    assert sessions and all(secrets_nowhere_in(d / "logs") == [] for d in sessions)
    (parent,) = runs_of(stack, "sweep")
    assert (
        parent.data.tags[LAUNCHER_TAG] == "2 Ray tasks on a Ray started on this machine (127.0.0.1)"
    )
    faults.wait_until(lambda: not no_ray_left(before), 60, "Ray to stop")


def test_ray_populations_of_2_on_2_workers(ray_installed, stack):
    """--population 2 under a launcher: each Ray worker trains two trials at once as one
    batched model; the study still ends at exactly 8 trials and 8 runs."""
    before = ray_processes()
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "ray", "--jobs", "2", "--population", "2")
    check_complete_sweep(stack, proc)
    faults.wait_until(lambda: not no_ray_left(before), 60, "Ray to stop")


def test_ray_sweep_and_ablation_on_2_workers(ray_installed, stack):
    before = ray_processes()
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS, extra=ABLATION)
    proc = launch(stack, exp, "--launcher", "ray", "--jobs", "2")
    check_complete_sweep(stack, proc)
    check_complete_ablation(stack, proc, exp)
    faults.wait_until(lambda: not no_ray_left(before), 60, "Ray to stop")


def test_ray_worker_killed_mid_ablation_loses_nothing(ray_installed, stack):
    """kill -9 of a Ray worker process while it works on an ablation unit (a tuning, or an
    arm run): the unit is failed and run again (a tuning resumed where it stood); every
    (arm, seed) ends with one FINISHED run, nothing is left RUNNING in Optuna or MLflow."""
    before = ray_processes()
    path = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=0, extra=ABLATION)
    exp = load_experiment(path)
    proc = launch(stack, path, "--launcher", "ray", "--jobs", "2")

    def a_unit_in_progress():
        for t in faults.trials_of(stack.storage, f"{exp.name}.ablation"):
            if t.state == TrialState.RUNNING and OWNER_ATTR in t.user_attrs:
                return t
        return None

    victim = faults.wait_until(a_unit_in_progress, 600, "a unit in progress", every=0.05)
    time.sleep(1.0)  # into its training
    os.kill(victim.user_attrs[OWNER_ATTR]["pid"], signal.SIGKILL)
    assert proc.wait(900) == 0, proc.stderr()[-3000:]
    units = faults.trials_of(stack.storage, f"{exp.name}.ablation")
    assert faults.counted(units) == len(ablation_steps(exp))
    assert not [t for t in units if t.state == TrialState.RUNNING]
    failed = [t for t in units if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]
    assert failed[0].user_attrs[FAILURE_ATTR] == "killed"
    for arm in ("l2", "all"):
        tuning = faults.trials_of(stack.storage, f"{exp.name}.ablation.{arm}")
        assert faults.counted(tuning) == arm_tuning(exp, arm).budget
        assert not [t for t in tuning if t.state == TrialState.RUNNING]
    client = MlflowClient(stack.server_url)
    experiment = client.get_experiment_by_name(faults.STUDY)
    every = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in every if r.info.status == "RUNNING"] == []
    finished = sorted(
        (r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"])
        for r in runs_of(stack, "arm")
        if r.info.status == "FINISHED"
    )
    assert finished == sorted((a, s) for a in exp.ablation.arms for s in ("0", "1"))
    (parent,) = runs_of(stack, "ablation")
    assert parent.info.status == "FINISHED"
    faults.wait_until(lambda: not no_ray_left(before), 60, "Ray to stop")


def test_ray_worker_killed_mid_trial_loses_nothing(ray_installed, stack):
    """kill -9 of a Ray worker process while it trains: Ray starts the task again; the trial
    it was on is failed (its worker is gone) and runs again; nothing is lost."""
    before = ray_processes()
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    proc = launch(stack, exp, "--launcher", "ray", "--jobs", "2")
    victim = mid_trial(stack)
    os.kill(victim.user_attrs[OWNER_ATTR]["pid"], signal.SIGKILL)
    assert proc.wait(900) == 0, proc.stderr()[-3000:]
    check_recovered(stack, victim.number, "killed", "is gone")
    faults.wait_until(lambda: not no_ray_left(before), 60, "Ray to stop")


# ---------------------------------------------------------------------------------------------
# The same sweep with --workers 2 on this machine: the figure the launchers are compared with


def test_local_workers_sweep_of_8_trials_for_comparison(stack):
    exp = faults.write_experiment(stack.folder, epochs=SHORT_EPOCHS, trials=TRIALS)
    started = time.monotonic()
    proc = launch(stack, exp, "--workers", "2")
    check_complete_sweep(stack, proc)
    record_time("--workers 2", time.monotonic() - started)


@pytest.fixture
def ray_head(ray_installed, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """A running Ray cluster (head on 127.0.0.1, token authentication) from ray-up.sh; its
    client environment is set in this process, as a user sources it in their shell."""
    state = tmp_path / "ray-head"
    env = {
        **os.environ,
        "RAY_BIN": str(Path(sys.executable).parent / "ray"),
        "RAY_NUM_CPUS": "2",
        "RAY_GCS_PORT": str(faults.free_port()),
    }
    up = subprocess.run(
        ["bash", str(ENGINES / "ray-up.sh"), str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        if up.returncode != 0:
            missing(f"ray-up.sh failed: {(up.stderr or up.stdout)[-500:]}")
        client = {}
        for line in (state / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            client[key] = value
            monkeypatch.setenv(key, value)
        yield client
    finally:
        subprocess.run(["bash", str(ENGINES / "ray-down.sh"), str(state)], timeout=120)


def test_ray_detached_parent_belongs_to_its_job_until_the_study_is_done(ray_head, stack):
    """--detach on a running cluster: a detached actor drives the workers after the command
    returned; recovery leaves the parent run alone while the actor lives; the last worker
    closes it FINISHED; then the job is gone."""
    exp = faults.write_experiment(stack.folder, epochs=LONG_EPOCHS, trials=TRIALS)
    flags = ("--launcher", "ray", "--jobs", "2", "--ray-address", "auto", "--one-machine")
    proc = launch(stack, exp, *flags, "--detach")
    assert proc.wait(300) == 0, proc.stderr()[-3000:]
    assert "submitted; watch: Ray job studylib-faults-" in proc.stdout()
    (parent,) = runs_of(stack, "sweep")
    owner = JobOwner.from_attr(json.loads(parent.data.tags[OWNER_ATTR]))
    assert owner is not None and owner.engine == "ray"
    assert owner.where == ray_head["RAY_ADDRESS"]
    # Three trials still to come: on an idle machine 8 trials end in under half a minute, and
    # the study (and its parent run) must not end between this look and the checks below.
    mid_trial(stack, unasked=3)
    assert owner.state() == "alive"
    tracker = Tracker(stack.server_url, faults.STUDY)
    assert close_dead_sweeps(tracker) == []
    assert tracker.run_states("sweep")[parent.info.run_id] == "RUNNING"
    faults.wait_until(
        lambda: tracker.run_states("sweep")[parent.info.run_id] == "FINISHED", 900, "the end"
    )
    trials = faults.trials_of(stack.storage)
    assert faults.counted(trials) == TRIALS and len(trials) == TRIALS
    faults.wait_until(lambda: owner.state() == "gone", 120, "the driving actor to exit")
