"""`make faults`: the failure scenarios of issue 6, run end to end, and a table of what happened.

Each scenario starts real `python -m studylib sweep` processes in a fresh folder, injects one
fault (kill -9, SIGINT, SIGTERM, a diverging learning rate, workers started together, a tracking
server that stops, a changed configuration, a password in a URL, malformed files), then reads
Optuna and MLflow back and checks what a user was promised. "trials lost" counts trials that
had completed (in Optuna, with their MLflow run and curve) before the fault and are missing or
altered after recovery, plus requested trials the study never reached: it must be 0.

The helpers (workers, an MLflow server on a free loopback port, throwaway PostgreSQL databases)
are shared with tests/test_faults.py and tests/test_postgres.py, which run the same scenarios.

    python -m bench.faults [--only NAME ...] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from studylib.names import FAILURE_ATTR, OWNER_ATTR, REASON_ATTR, RUN_ID_ATTR
from studylib.sweep.storage import JournalReader, is_record, make_storage
from studylib.sweep.study import count_done

PYTHON = sys.executable
STUDY = "faults"
# The PostgreSQL server that hands out throwaway databases (trust auth on the CI machine).
POSTGRES_ADMIN_URL = os.environ.get(
    "STUDYLIB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
SECRET = "s3cret-Pa55word"
# Long enough (a second or two) to catch a worker mid-trial, short enough to keep tests quick.
MID_TRIAL_EPOCHS = 60

EXPERIMENT = """
name = "{name}"
seed = {seed}
[data]
num_train = {num_train}
num_test = 200
val_fraction = 0.25
train_examples = {train_examples}
{data_extra}
[model]
{model}
[train]
optimizer = "{optimizer}"
lr = {lr}
batch_size = 50
max_epochs = {epochs}
early_stopping = false
{train_extra}
[sweep]
trials = {trials}
[sweep.pruner]
enabled = false
[sweep.search.dropout]
low = 0.0
high = 0.5
{extra}
"""


def write_experiment(
    folder: Path,
    *,
    name: str = STUDY,
    epochs: int = 3,
    trials: int = 4,
    lr: float = 3e-3,
    optimizer: str = "adam",
    extra: str = "",
    seed: int = 0,
    num_train: int = 600,
    train_examples: int = 300,
    model: str = 'arch = "mlp"\nhidden = [32]',
    data_extra: str = "",
    train_extra: str = "",
) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        EXPERIMENT.format(
            name=name,
            epochs=epochs,
            trials=trials,
            lr=lr,
            optimizer=optimizer,
            extra=extra,
            seed=seed,
            num_train=num_train,
            train_examples=train_examples,
            model=model,
            data_extra=data_extra,
            train_extra=train_extra,
        )
    )
    return path


# ---------------------------------------------------------------------------------------------
# Workers


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Tiny models on a shared 2-core machine: one thread each keeps N workers from thrashing.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def sweep_argv(experiment: Path, *args: str) -> list[str]:
    return ["sweep", str(experiment), "--no-progress", "--device", "cpu", *args]


@dataclasses.dataclass
class Proc:
    """A process started by a scenario, its output kept in files (pipes could fill and block)."""

    popen: subprocess.Popen
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.popen.wait(60)


_counter = 0


def start(folder: Path, argv: list[str], *, python_args: tuple[str, ...] = ("-m", "studylib")):
    global _counter
    _counter += 1
    out, err = folder / f"proc-{_counter}.out", folder / f"proc-{_counter}.err"
    with open(out, "w") as o, open(err, "w") as e:
        popen = subprocess.Popen(
            [PYTHON, *python_args, *argv], cwd=folder, stdout=o, stderr=e, env=worker_env()
        )
    return Proc(popen, out, err)


def run(folder: Path, argv: list[str], timeout: float = 300) -> Proc:
    proc = start(folder, argv)
    proc.wait(timeout)
    return proc


# Imports everything, says it is ready, waits for the go file, then runs the CLI: N of these
# start their sweeps within a millisecond of each other, not seconds apart as imports finish.
_TOGETHER = """
import os, sys, time, pathlib
import studylib.cli, studylib.sweep
gate = pathlib.Path(sys.argv[1])
(gate / f"ready-{os.getpid()}").touch()
while not (gate / "go").exists():
    time.sleep(0.0005)
sys.exit(studylib.cli.main(sys.argv[2:]))
"""


def start_together(folder: Path, n: int, argv: list[str], timeout: float = 180) -> list[Proc]:
    gate = folder / "gate"
    gate.mkdir()
    procs = [start(folder, [str(gate), *argv], python_args=("-c", _TOGETHER)) for _ in range(n)]
    wait_until(lambda: len(list(gate.glob("ready-*"))) == n, timeout, "workers ready")
    (gate / "go").touch()
    return procs


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# Reading Optuna and MLflow back


def _storage(storage: str) -> optuna.storages.BaseStorage:
    """The harness reads a journal without writing (no lock, no repair: what the workers do
    to a torn journal is what a scenario checks); a database through Optuna."""
    if "://" not in storage:
        return optuna.storages.JournalStorage(JournalReader(storage))
    return _database(storage)


@functools.cache
def _database(storage: str) -> optuna.storages.BaseStorage:
    return make_storage(storage)


def load_study(storage: str, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage(storage))


def trials_of(storage: str, name: str = STUDY) -> list[FrozenTrial]:
    try:
        return load_study(storage, name).get_trials(deepcopy=False)
    except (KeyError, FileNotFoundError):  # not created yet
        return []


def running_mid_trial(storage: str, name: str = STUDY, epochs: int = 1, completed: int = 1):
    """A RUNNING trial that has its MLflow run and `epochs` reported epochs, once `completed`
    trials have finished; None until then."""
    trials = trials_of(storage, name)
    if sum(t.state == TrialState.COMPLETE for t in trials) < completed:
        return None
    for t in trials:
        if (
            t.state == TrialState.RUNNING
            and t.user_attrs.get(RUN_ID_ATTR)
            and len(t.intermediate_values) >= epochs
        ):
            return t
    return None


@dataclasses.dataclass(frozen=True)
class Record:
    """A completed trial as both systems hold it."""

    value: float | None
    params: tuple
    run_id: str
    run_status: str
    points: int  # per-epoch val/loss points in MLflow


def snapshot(storage: str, tracking_uri: str, name: str = STUDY) -> dict[int, Record]:
    client = MlflowClient(tracking_uri)
    out = {}
    for t in trials_of(storage, name):
        if t.state != TrialState.COMPLETE:
            continue
        run_id = t.user_attrs.get(RUN_ID_ATTR, "")
        try:
            run = client.get_run(run_id)
            status = run.info.status
            points = len(client.get_metric_history(run_id, "val/loss"))
        except Exception:
            status, points = "missing", 0
        out[t.number] = Record(t.value, tuple(sorted(t.params.items())), run_id, status, points)
    return out


def lost(before: dict[int, Record], after: dict[int, Record]) -> list[int]:
    return [n for n, rec in before.items() if after.get(n) != rec]


def trial_runs(tracking_uri: str, name: str = STUDY) -> list[Any]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'trial'")


def counted(trials: list[FrozenTrial]) -> int:
    return count_done(trials)


# ---------------------------------------------------------------------------------------------
# Servers: MLflow on a free loopback port, throwaway PostgreSQL databases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """A real `mlflow server` bound to 127.0.0.1, stoppable and restartable on the same port."""

    def __init__(self, folder: Path, backend_uri: str):
        self.folder = folder
        self.backend_uri = backend_uri
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Proc | None = None

    def start(self, timeout: float = 180) -> None:
        env = worker_env()
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner: starts in seconds
        argv = [
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.folder / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        global _counter
        _counter += 1
        out, err = self.folder / f"server-{_counter}.out", self.folder / f"server-{_counter}.err"
        with open(out, "w") as o, open(err, "w") as e:
            popen = subprocess.Popen(
                [PYTHON, "-m", "mlflow", *argv],
                cwd=self.folder,
                stdout=o,
                stderr=e,
                env=env,
                start_new_session=True,  # its uvicorn child goes down with it
            )
        self.proc = Proc(popen, out, err)
        wait_until(self._healthy, timeout, f"mlflow server on port {self.port}", every=0.25)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {self.proc.stderr()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.popen.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group of the server we started
            try:
                self.proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.popen.wait(30)
        self.proc = None


@contextlib.contextmanager
def tracking_server(folder: Path, backend_uri: str) -> Iterator[TrackingServer]:
    server = TrackingServer(folder, backend_uri)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def postgres_unreachable() -> str | None:
    """Why no throwaway PostgreSQL database can be made here, or None if one can."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {first}"
    return None


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def postgres_database(tag: str, password: str | None = None) -> Iterator[str]:
    """A fresh database, dropped afterwards; yields its URL (with `password` in it, if given:
    trust authentication ignores it, and it shows whether studylib leaks it)."""
    import psycopg
    from psycopg import sql

    name = f"studylib_{tag}_{uuid.uuid4().hex[:8]}"
    admin = _libpq(POSTGRES_ADMIN_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    if password:
        scheme, rest = base.split("://", 1)
        user_host = rest.split("@", 1)
        base = f"{scheme}://{user_host[0]}:{password}@{user_host[1]}"
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclasses.dataclass
class Outcome:
    scenario: str
    expected: str
    observed: str = ""
    lost: int | None = 0  # None: skipped
    failures: list[str] = dataclasses.field(default_factory=list)
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self, condition: Any, what: str) -> bool:
        if not condition:
            self.failures.append(what)
        return bool(condition)

    @property
    def ok(self) -> bool:
        return not self.failures and (self.lost or 0) == 0


def _no_traceback(outcome: Outcome, proc: Proc, label: str) -> None:
    outcome.check("Traceback" not in proc.stderr(), f"{label}: traceback on stderr")


def _retry_of(trials: list[FrozenTrial], number: int) -> FrozenTrial | None:
    for t in trials:
        if t.system_attrs.get("failed_trial") == number:
            return t
    return None


def _check_recovered(
    outcome: Outcome,
    storage: str,
    tracking_uri: str,
    victim: int,
    failure: str | None,
    run_status: str,
    total: int,
    before: dict[int, Record],
) -> str:
    """The common promise after a fault and one resume; returns a summary for the table."""
    trials = trials_of(storage)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim]
    outcome.check(killed.state == TrialState.FAIL, f"trial {victim} is {killed.state.name}")
    if failure is not None:  # None: failed by Optuna's heartbeat, which names no cause
        outcome.check(
            killed.user_attrs.get(FAILURE_ATTR) == failure,
            f"trial {victim} failure {killed.user_attrs.get(FAILURE_ATTR)!r} != {failure!r}",
        )
    run_id = killed.user_attrs.get(RUN_ID_ATTR)
    status = "never created"
    if run_id is not None or failure != "tracking":  # an outage may strike before the run
        run = MlflowClient(tracking_uri).get_run(run_id)
        status = run.info.status
        outcome.check(status == run_status, f"its run is {status}")
        outcome.check(run.data.tags.get("studylib.reason"), "its run has no reason tag")
    retry = _retry_of(trials, victim)
    outcome.check(retry is not None, f"trial {victim} was not retried")
    if retry is not None:
        outcome.check(retry.params == killed.params, "the retry has other parameters")
        outcome.check(retry.state == TrialState.COMPLETE, f"the retry is {retry.state.name}")
    outcome.check(not [t for t in trials if t.state == TrialState.RUNNING], "trials left RUNNING")
    done = counted(trials)
    outcome.check(done == total, f"{done} of {total} trials")
    after = snapshot(storage, tracking_uri)
    gone = lost(before, after)
    outcome.lost = len(gone) + max(0, total - done)
    outcome.numbers.update(victim=victim, retry=retry.number if retry else None, done=done)
    return (
        f"trial {victim} FAIL ({failure or 'heartbeat'}), run {status}; retried as trial "
        f"{retry.number if retry else '-'} (same params); {done}/{total} trials"
    )


FAULTS = {
    # how: (exit code of the faulted worker, Optuna failure kind, what the resume must say)
    "SIGKILL": (-signal.SIGKILL, "killed", "its worker (pid {pid}"),
    "SIGINT": (130, "interrupted", "trial {number} (interrupted) queued again"),
    "SIGTERM": (143, "interrupted", "trial {number} (interrupted) queued again"),
}


def interruptions(folder: Path, kinds: tuple[str, ...] = ("SIGKILL", "SIGINT", "SIGTERM")):
    """Each fault in turn hits a worker mid-trial (after at least one more trial completed);
    the next worker resumes; a last one completes the study. One outcome per fault."""
    total = 2 * len(kinds) + 1
    exp = write_experiment(folder, epochs=MID_TRIAL_EPOCHS, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    pending: list[tuple[Outcome, int, dict[int, Record]]] = []
    proc = start(folder, sweep_argv(exp))
    for kind in kinds:
        code, failure, said = FAULTS[kind]
        outcome = Outcome(
            f"{'kill -9' if kind == 'SIGKILL' else kind} of a worker mid-trial, then resume",
            ("killed trial" if kind == "SIGKILL" else f"exit {code}, no traceback; trial")
            + f" FAIL + run KILLED; retried with same params; {total}/{total} trials",
        )
        completed = sum(t.state == TrialState.COMPLETE for t in trials_of(storage))
        victim = wait_until(
            lambda n=completed: running_mid_trial(storage, completed=n + 1), 240, "mid-trial"
        )
        proc.popen.send_signal(getattr(signal, kind))
        rc = proc.wait(120)
        before = snapshot(storage, tracking)  # what had completed when the worker stopped
        outcome.check(rc == code, f"exit code {rc}, expected {code}")
        trial = {t.number: t for t in trials_of(storage)}[victim.number]
        if kind == "SIGKILL":
            outcome.check(trial.state == TrialState.RUNNING, "the killed trial is not RUNNING")
        else:
            _no_traceback(outcome, proc, kind)
            outcome.check(f"stopped by {kind}" in proc.stderr(), "no one-line explanation")
            outcome.check(trial.state == TrialState.FAIL, f"trial is {trial.state.name}")
            run_ = MlflowClient(tracking).get_run(victim.user_attrs[RUN_ID_ATTR])
            outcome.check(
                run_.data.tags.get("studylib.reason") == f"interrupted by {kind}",
                f"run reason {run_.data.tags.get('studylib.reason')!r}",
            )
        outcome.numbers.update(exit=rc, victim=victim.number, completed_before=len(before))
        pending.append((outcome, victim.number, before))
        expected = said.format(pid=proc.pid, number=victim.number)
        proc = start(folder, sweep_argv(exp))  # the resume, and the next victim
        wait_until(lambda p=proc: p.stderr().count("studylib:"), 120, "the resume's notes")
        outcome.check(expected in proc.stderr(), f"the resume did not say {expected!r}")
    rc = proc.wait(300)
    for outcome, victim, before in pending:
        outcome.check(rc == 0, f"the last resume exited {rc}: {proc.stderr()[-300:]}")
        failure = FAULTS["SIGKILL" if "kill" in outcome.scenario else "SIGINT"][1]
        summary = _check_recovered(
            outcome, storage, tracking, victim, failure, "KILLED", total, before
        )
        outcome.observed = f"exit {outcome.numbers['exit']}; {summary}"
    return [outcome for outcome, _, _ in pending]


def population_kill(folder: Path, workers: int = 1, population: int = 3) -> Outcome:
    """kill -9 of a process training a population mid-way (with `workers` > 1: one of the
    worker processes, not the main one), then a resume: every killed member is failed and run
    again with its parameters, the study ends at exactly its total, no MLflow run is left
    RUNNING and nothing completed before the kill changes."""
    where = "one process" if workers == 1 else f"one of {workers} worker processes"
    outcome = Outcome(
        f"kill -9 mid-population (--population {population}, {where}), then resume",
        "killed members FAIL + runs KILLED; retried with same params; exact total; no run RUNNING",
    )
    folder.mkdir(parents=True, exist_ok=True)
    # Long enough that a worker process started beside the main one (seconds) gets a population.
    total = 4 * population * workers
    exp = write_experiment(folder, epochs=5 * MID_TRIAL_EPOCHS, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    extra = ["--population", str(population), "--workers", str(workers)]
    proc = start(folder, sweep_argv(exp, *extra))

    def members_mid_way():
        trials = trials_of(storage)
        if sum(t.state == TrialState.COMPLETE for t in trials) < population:
            return None  # something completed first: something to lose
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and t.user_attrs.get(RUN_ID_ATTR)
            and len(t.intermediate_values) >= 2
        ]
        owners = {t.user_attrs[OWNER_ATTR]["pid"] for t in running}
        victims = [pid for pid in owners if workers == 1 or pid != proc.pid]
        return (victims[0], running) if victims else None

    pid, running = wait_until(members_mid_way, 300, "a population mid-way")
    os.kill(pid, signal.SIGKILL)
    killed = [t.number for t in running if t.user_attrs[OWNER_ATTR]["pid"] == pid]
    code = proc.wait(300)
    before = snapshot(storage, tracking)
    resume = run(folder, sweep_argv(exp, *extra))
    outcome.check(resume.wait() == 0, f"resume exited {resume.wait()}: {resume.stderr()[-300:]}")
    trials = trials_of(storage)
    by_number = {t.number: t for t in trials}
    client = MlflowClient(tracking)
    for number in killed:
        trial = by_number[number]
        outcome.check(trial.state == TrialState.FAIL, f"member {number} is {trial.state.name}")
        outcome.check(
            trial.user_attrs.get(FAILURE_ATTR) == "killed",
            f"member {number}: failure {trial.user_attrs.get(FAILURE_ATTR)!r}",
        )
        run_ = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        outcome.check(run_.info.status == "KILLED", f"member {number}: run {run_.info.status}")
        retry = _retry_of(trials, number)
        outcome.check(retry is not None, f"member {number} was not retried")
        if retry is not None:
            outcome.check(retry.params == trial.params, f"member {number}: retry params differ")
            outcome.check(retry.state == TrialState.COMPLETE, f"retry is {retry.state.name}")
    outcome.check(not [t for t in trials if t.state == TrialState.RUNNING], "trials RUNNING")
    open_runs = [r for r in trial_runs(tracking) if r.info.status == "RUNNING"]
    outcome.check(not open_runs, f"{len(open_runs)} MLflow runs left RUNNING")
    done = counted(trials)
    outcome.check(done == total, f"{done} of {total} trials")
    gone = lost(before, snapshot(storage, tracking))
    outcome.lost = len(gone) + max(0, total - done)
    outcome.numbers.update(killed=killed, exit=code, done=done, completed_before=len(before))
    outcome.observed = (
        f"killed pid {pid} with members {killed} (command exit {code}); resume: each FAIL "
        f"(killed), run KILLED, retried with same params; {done}/{total} trials; "
        f"{len(open_runs)} runs RUNNING"
    )
    return outcome


def diverging(folder: Path) -> Outcome:
    outcome = Outcome(
        "diverging training (L2 100..1000, SGD)",
        "diverged trials FAIL with reason, sweep goes on, report lists them",
    )
    total = 4
    exp = write_experiment(
        folder,
        epochs=4,
        trials=total,
        lr=0.1,
        optimizer="sgd",
        extra="[sweep.search.l2]\nlow = 100.0\nhigh = 1000.0\nlog = true\n",
    )
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    proc = run(folder, sweep_argv(exp))
    outcome.check(proc.wait() == 0, f"sweep exited {proc.wait()}: {proc.stderr()[-300:]}")
    trials = trials_of(storage)
    diverged = [t for t in trials if t.user_attrs.get(FAILURE_ATTR) == "diverged"]
    outcome.check(len(trials) == total, f"{len(trials)} trials, expected {total}")
    outcome.check(len(diverged) == total - 1, f"{len(diverged)} diverged, expected {total - 1}")
    for t in diverged:
        outcome.check(t.state == TrialState.FAIL, f"diverged trial {t.number} is {t.state.name}")
        run_ = MlflowClient(tracking).get_run(t.user_attrs[RUN_ID_ATTR])
        outcome.check(
            run_.info.status == "FAILED"
            and "non-finite loss" in run_.data.tags.get("studylib.reason", ""),
            f"trial {t.number}: run {run_.info.status}, reason missing",
        )
    report = run(folder, ["report", "--out", str(folder / "reports")])
    outcome.check(report.wait() == 0, f"report exited {report.wait()}: {report.stderr()[-300:]}")
    markdown = folder / "reports" / STUDY / "report.md"
    text = markdown.read_text() if markdown.exists() else ""
    listed = text.split("## Trials without a result")[-1] if "without a result" in text else ""
    outcome.check(
        all(f"| {t.number} | diverged | non-finite loss" in listed for t in diverged),
        "the report does not list every diverged trial with its reason",
    )
    outcome.lost = max(0, total - counted(trials))
    outcome.numbers.update(diverged=len(diverged), trials=len(trials))
    outcome.observed = (
        f"{len(diverged)} of {len(trials)} trials diverged (FAIL, run FAILED with reason); "
        f"{counted(trials)}/{total} counted; report lists them"
    )
    return outcome


def workers_together(folder: Path, n: int = 4, total: int = 8) -> Outcome:
    outcome = Outcome(
        f"{n} workers started together (journal + SQLite MLflow, fresh files)",
        f"exactly {total} distinct trials, baseline once, one experiment, no lock errors",
    )
    exp = write_experiment(folder, epochs=3, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    procs = start_together(folder, n, sweep_argv(exp))
    codes = [p.wait(600) for p in procs]
    outcome.check(codes == [0] * n, f"exit codes {codes}: {procs[0].stderr()[-500:]}")
    locked = sum(p.stderr().count("database is locked") for p in procs)
    trials = trials_of(storage)
    numbers = sorted(t.number for t in trials)
    outcome.check(numbers == list(range(total)), f"trial numbers {numbers}")
    outcome.check(
        all(t.state == TrialState.COMPLETE for t in trials),
        f"states {sorted({t.state.name for t in trials})}",
    )
    baselines = [t.number for t in trials if t.user_attrs.get("baseline")]
    outcome.check(baselines == [0], f"baseline trials {baselines}")
    params = {tuple(sorted(t.params.items())) for t in trials}
    outcome.check(len(params) == total, f"only {len(params)} distinct parameter sets")
    client = MlflowClient(tracking)
    experiments = [e.name for e in client.search_experiments() if e.name == STUDY]
    outcome.check(len(experiments) == 1, f"{len(experiments)} MLflow experiments named {STUDY}")
    runs = trial_runs(tracking)
    tags = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
    outcome.check(tags == list(range(total)), f"trial runs {tags}")
    outcome.check(all(r.info.status == "FINISHED" for r in runs), "a trial run not FINISHED")
    ran = [int(p.stdout().split("(")[1].split()[0]) for p in procs if "run now" in p.stdout()]
    outcome.lost = max(0, total - counted(trials))
    outcome.numbers.update(trials=len(trials), runs=len(runs), ran=ran, locked_retries=locked)
    outcome.observed = (
        f"{len(trials)} trials (numbers 0-{total - 1}, {len(params)} distinct), {len(runs)} runs,"
        f" baseline {baselines}; per worker {ran}; exit codes {codes}; 'database is locked' "
        f"seen {locked}x"
    )
    return outcome


def tracking_down(folder: Path) -> Outcome:
    outcome = Outcome(
        "MLflow server stops mid-sweep, then restarts",
        "bounded retries, one-line error (exit 3), Optuna consistent; resume lists gaps",
    )
    total = 5
    exp = write_experiment(folder, epochs=MID_TRIAL_EPOCHS, trials=total)
    storage = str(folder / "optuna.journal")
    with tracking_server(folder, f"sqlite:///{folder / 'server.db'}") as server:
        argv = sweep_argv(exp, "--tracking-uri", server.url, "--tracking-timeout", "3")
        proc = start(folder, argv)
        wait_until(lambda: running_mid_trial(storage), 240, "a trial mid-way")
        before = snapshot(storage, server.url)
        server.stop()
        stopped = time.monotonic()
        rc = proc.wait(180)
        waited = time.monotonic() - stopped
        outcome.check(rc == 3, f"exit code {rc}, expected 3: {proc.stderr()[-500:]}")
        _no_traceback(outcome, proc, "worker")
        lines = [line for line in proc.stderr().splitlines() if "error:" in line]
        outcome.check(
            len(lines) == 1 and "unavailable" in lines[0] and "marked FAIL" in lines[0],
            f"error lines {lines}",
        )
        trials = trials_of(storage)
        outcome.check(not [t for t in trials if t.state == TrialState.RUNNING], "RUNNING left")
        # The trial running when the server went away (or the next one, if it finished
        # first), and the one before it when its records still waited in the writer's queue
        # (issue 17: records are written off the training path, so two can be in flight).
        failed = [t.number for t in trials if t.user_attrs.get(FAILURE_ATTR) == "tracking"]
        if not outcome.check(1 <= len(failed) <= 2, f"trials failed for tracking: {failed}"):
            outcome.observed = f"exit {rc}"
            return outcome
        server.start()
        resume = run(folder, argv)
        outcome.check(resume.wait() == 0, f"resume exited {resume.wait()}")
        said = [line for line in resume.stderr().splitlines() if "lacking" in line]
        for victim in failed:
            outcome.check(
                said and f" {victim} (" in said[0], f"resume did not name {victim}: {said}"
            )
            summary = _check_recovered(
                outcome, storage, server.url, victim, "tracking", "FAILED", total, before
            )
        outcome.numbers.update(seconds_to_error=round(waited, 1))
        gap = said[0].split(": ", 1)[-1] if said else "-"
        outcome.observed = f"exit {rc} after {waited:.0f} s; resume named {gap}; {summary}"
    return outcome


def mismatch(folder: Path) -> Outcome:
    outcome = Outcome(
        "resume with a changed lr and search space",
        "refused, exit 2, one line naming the changes; --new-study starts <name>-v2",
    )
    exp = write_experiment(folder, epochs=2, trials=2)
    storage = str(folder / "optuna.journal")
    first = run(folder, sweep_argv(exp))
    outcome.check(first.wait() == 0, f"first sweep exited {first.wait()}")
    changed = write_experiment(
        folder,
        epochs=2,
        trials=3,
        lr=0.01,
        extra="[sweep.search.l2]\nlow = 1e-6\nhigh = 1e-2\nlog = true\n",
    )
    refused = run(folder, sweep_argv(changed))
    lines = refused.stderr().strip().splitlines()
    outcome.check(refused.wait() == 2, f"exit {refused.wait()}")
    outcome.check(len(lines) == 1, f"{len(lines)} lines on stderr")
    outcome.check(
        lines and "train.lr 0.003 -> 0.01" in lines[0] and "sweep.search.l2 added" in lines[0],
        f"message {lines}",
    )
    outcome.check(len(trials_of(storage)) == 2, "the refused resume touched the study")
    fresh = run(folder, sweep_argv(changed, "--new-study"))
    again = run(folder, sweep_argv(changed, "--new-study", "--trials", "4"))
    outcome.check(fresh.wait() == 0 and again.wait() == 0, "--new-study failed")
    names = sorted(optuna.get_all_study_names(_storage(storage)))
    outcome.check(names == [STUDY, f"{STUDY}-v2"], f"studies {names}")
    outcome.check(
        len(trials_of(storage, f"{STUDY}-v2")) == 4, "the second --new-study did not resume v2"
    )
    outcome.lost = 0 if len(trials_of(storage)) == 2 else 1
    changes = lines[0].split("other settings: ", 1)[-1].split(". ")[0] if lines else "-"
    outcome.observed = f"exit 2 naming: {changes}; --new-study made, then resumed, {names[1:]}"
    return outcome


def secrets(folder: Path, storage: str | None, tracking_uri: str | None) -> Outcome:
    """Passwords in URLs never reach MLflow, the output or an error message."""
    outcome = Outcome(
        "password in storage URL and tracking URI",
        "never in MLflow params/tags, output or errors (shown as ***)",
    )
    exp = write_experiment(folder, epochs=2, trials=2)
    procs = []
    if storage and tracking_uri:
        ok = run(folder, sweep_argv(exp, "--storage", storage, "--tracking-uri", tracking_uri))
        outcome.check(ok.wait() == 0, f"sweep exited {ok.wait()}: {ok.stderr()[-300:]}")
        procs.append(ok)
        client = MlflowClient(tracking_uri)
        exp_id = client.get_experiment_by_name(STUDY).experiment_id
        for r in client.search_runs([exp_id]):
            values = [*r.data.params.values(), *r.data.tags.values()]
            outcome.check(not any(SECRET in v for v in values), f"secret in run {r.info.run_id}")
    bad_storage = run(
        folder, sweep_argv(exp, "--storage", f"postgresql://postgres:{SECRET}@127.0.0.1:1/x")
    )
    bad_tracking = run(
        folder,
        sweep_argv(
            exp,
            "--tracking-uri",
            f"http://user:{SECRET}@127.0.0.1:{free_port()}",
            "--tracking-timeout",
            "1",
        ),
    )
    outcome.check(bad_storage.wait() != 0, "unreachable storage did not fail")
    outcome.check(bad_tracking.wait() == 3, f"unreachable tracking exited {bad_tracking.wait()}")
    outcome.check("***" in bad_tracking.stderr(), "the tracking error does not show ***")
    procs += [bad_storage, bad_tracking]
    leaks = [p.err.name for p in procs if SECRET in p.stdout() + p.stderr()]
    outcome.check(not leaks, f"secret printed by {leaks}")
    outcome.lost = 0
    what = "a sweep with a password in its PostgreSQL URL, " if storage else ""
    outcome.observed = (
        f"{what}unreachable storage (exit {bad_storage.wait()}) and tracking (exit "
        f"{bad_tracking.wait()}, shows ***): password printed by {leaks or 'none'}"
    )
    return outcome


def secrets_scenario(folder: Path) -> Outcome:
    """With PostgreSQL: a whole sweep with a password in the storage URL, then the errors."""
    if postgres_unreachable():
        return secrets(folder, None, None)
    with postgres_database("secrets", SECRET) as storage:
        return secrets(folder, storage, f"sqlite:///{folder / 'mlflow.db'}")


BAD_FILES = {
    "invalid TOML": b"name = \n[train\n",
    "wrong type": b'name = "x"\n[train]\nlr = "fast"\n',
    "unknown key": b'name = "x"\n[train]\nlearning_rate = 0.1\n',
    "out of range": b'name = "x"\n[model]\ndropout = 1.5\n',
    "binary": bytes(range(256)),
}
# Issue 13's inputs, each a change to a valid experiment (EXPERIMENT) or its command line.
BAD_CHANGES: dict[str, tuple[dict[str, Any], list[str], str]] = {
    # label: (write_experiment arguments, extra flags, what the one line must say)
    "search range past its field": (
        {"extra": "[sweep.search.lr]\nlow = 1e-3\nhigh = 100\nlog = true\n"},
        [],
        "train.lr does not accept it",
    ),
    "search range to inf": (
        {"extra": "[sweep.search.lr]\nlow = 1e-3\nhigh = inf\nlog = true\n"},
        [],
        "sweep.search.lr.high = inf",
    ),
    "train_examples past the split": ({"train_examples": 100000}, [], "data.train_examples"),
    "seed past the RNGs": ({"seed": 10**20}, [], "seed = 100000000000000000000"),
    "negative generation seed": ({"data_extra": "generation_seed = -5"}, [], "generation_seed"),
    "l1 = inf": ({"train_extra": "l1 = inf"}, [], "train.l1 = inf"),
    "l2 = inf": ({"train_extra": "l2 = inf"}, [], "train.l2 = inf"),
    "min_delta = inf": ({"train_extra": "min_delta = inf"}, [], "train.min_delta = inf"),
    "num_train = 10**12": ({"num_train": 10**12}, [], "data.num_train = 1000000000000"),
    "max_epochs = 10**12": ({"epochs": 10**12}, [], "train.max_epochs = 1000000000000"),
    "batch-norm CNN population": (
        {"model": 'arch = "cnn"\nbatch_norm = true\nsize_rule = "floor"'},
        ["--population", "2"],
        "BatchNorm1d",
    ),
    "--seed past the RNGs": ({}, ["--seed", "99999999999999999999"], "argument --seed"),
    "--storage foo://bar": ({}, ["--storage", "foo://bar"], "--storage = 'foo://bar'"),
    "--storage ''": ({}, ["--storage", ""], "--storage = '': empty"),
    "--storage /proc/x.journal": ({}, ["--storage", "/proc/x.journal"], "cannot write in /proc"),
    "--tracking-uri foo://bar": ({}, ["--tracking-uri", "foo://bar"], "--tracking-uri = "),
    "--device cuda": ({}, ["--device", "cuda"], "--device = cuda"),
}


def _bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, but the scenario's own output captures."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("proc-")
    }


def bad_input(folder: Path) -> Outcome:
    """Malformed files and issue 13's bad inputs, each as its own `studylib` process in a
    folder that holds a finished study: exit 2, one line naming the problem, no traceback,
    every file byte-identical afterwards."""
    import torch  # start-up cost: only to know whether --device cuda can be refused here

    changes = {k: v for k, v in BAD_CHANGES.items() if k != "--device cuda"}
    if not torch.cuda.is_available():
        changes["--device cuda"] = BAD_CHANGES["--device cuda"]
    total = len(BAD_FILES) + len(changes) + 1
    outcome = Outcome(
        f"{total} bad inputs: malformed files, out-of-bounds fields and ranges, bad flags",
        "each: exit 2, one line naming it, no traceback, folder byte-identical",
    )
    work = folder / "bad"
    work.mkdir()
    ok = run(work, sweep_argv(write_experiment(work, name="held", epochs=2, trials=2)))
    outcome.check(ok.wait() == 0, f"the study the folder holds: exit {ok.wait()}")
    cases: list[tuple[str, list[str], str]] = []
    for label, content in BAD_FILES.items():
        (work / f"{label.replace(' ', '-')}.toml").write_bytes(content)
        cases.append((label, sweep_argv(work / f"{label.replace(' ', '-')}.toml"), ".toml"))
    for label, (fields, flags, said) in changes.items():
        path = write_experiment(work, name=f"bad{len(cases)}", **fields)
        cases.append((label, sweep_argv(path, *flags), said))
    cases.append(("report --out /proc/x", ["report", "--out", "/proc/x"], "--out = /proc/x"))
    for label, argv, said in cases:
        before = _bytes(work)
        proc = run(work, argv)
        lines = proc.stderr().strip().splitlines()
        outcome.check(proc.wait() == 2, f"{label}: exit {proc.wait()}")
        outcome.check(len(lines) == 1 and said in lines[0], f"{label}: {lines[-3:]}")
        _no_traceback(outcome, proc, label)
        after = _bytes(work)
        outcome.check(after == before, f"{label}: changed {sorted(set(after) ^ set(before))}")
    outcome.observed = f"{total - len(outcome.failures)} of {total} refused cleanly"
    return outcome


def postgres_workers(folder: Path, n: int = 4, per_worker: int = 5) -> Outcome:
    total = n * per_worker
    outcome = Outcome(
        f"{n} workers x {per_worker} trials on PostgreSQL + MLflow server on PostgreSQL",
        f"exactly {total} trials and {total} runs on the server, no password anywhere",
    )
    reason = postgres_unreachable()
    if reason:
        outcome.lost, outcome.observed = None, f"skipped: {reason}"
        return outcome
    exp = write_experiment(folder, epochs=2, trials=total)
    with (
        postgres_database("optuna", SECRET) as storage,
        postgres_database("mlflow") as backend,
        tracking_server(folder, backend) as server,
    ):
        tracking = server.url.replace("http://", f"http://studylib:{SECRET}@")
        argv = sweep_argv(exp, "--storage", storage, "--tracking-uri", tracking)
        procs = start_together(folder, n, argv)
        codes = [p.wait(600) for p in procs]
        outcome.check(codes == [0] * n, f"exit codes {codes}: {procs[0].stderr()[-500:]}")
        trials = trials_of(storage)
        numbers = sorted(t.number for t in trials)
        outcome.check(numbers == list(range(total)), f"trial numbers {numbers}")
        outcome.check(all(t.state == TrialState.COMPLETE for t in trials), "not all COMPLETE")
        runs = trial_runs(server.url)
        tags = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
        outcome.check(tags == list(range(total)), f"trial runs on the server: {tags}")
        outcome.check(all(r.info.status == "FINISHED" for r in runs), "a run not FINISHED")
        client = MlflowClient(server.url)
        exp_id = client.get_experiment_by_name(STUDY).experiment_id
        for r in client.search_runs([exp_id]):
            values = [*r.data.params.values(), *r.data.tags.values()]
            outcome.check(not any(SECRET in v for v in values), f"secret in run {r.info.run_id}")
        leaks = [p.err.name for p in procs if SECRET in p.stdout() + p.stderr()]
        outcome.check(not leaks, f"secret printed by {leaks}")
        ran = [int(p.stdout().split("(")[1].split()[0]) for p in procs if "run now" in p.stdout()]
        outcome.lost = max(0, total - counted(trials))
        outcome.numbers.update(trials=len(trials), runs=len(runs), ran=ran)
        outcome.observed = (
            f"{len(trials)} trials, {len(runs)} runs on the server; per worker {ran}; "
            f"password leaks: {len(leaks)}"
        )
    return outcome


def two_running(storage: str, name: str = STUDY, completed: int = 1):
    """Two RUNNING trials of different workers, each with its MLflow run and an epoch, once
    `completed` trials have completed: (one, other), else None."""
    trials = trials_of(storage, name)
    if sum(t.state == TrialState.COMPLETE for t in trials) < completed:
        return None
    running = [
        t
        for t in trials
        if t.state == TrialState.RUNNING and t.user_attrs.get(RUN_ID_ATTR) and t.intermediate_values
    ]
    by_pid = {t.user_attrs[OWNER_ATTR]["pid"]: t for t in running}
    return tuple(by_pid.values())[:2] if len(by_pid) >= 2 else None


def sweep_run_of(tracking_uri: str, pid: int, name: str = STUDY) -> Any:
    """The open sweep (parent) run that process `pid` owns."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    for run_ in client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'sweep'"):
        owner = json.loads(run_.data.tags.get(OWNER_ATTR, "{}"))
        if owner.get("pid") == pid:
            return run_
    return None


def state_of(storage: str, number: int) -> TrialState:
    return {t.number: t.state for t in trials_of(storage)}[number]


def trains(storage: str, pid: int) -> bool:
    """Whether process `pid` holds a RUNNING trial (it is training, not between trials)."""
    return any(
        t.state == TrialState.RUNNING and t.user_attrs.get(OWNER_ATTR, {}).get("pid") == pid
        for t in trials_of(storage)
    )


def postgres_heartbeat(folder: Path, heartbeat: int = 2) -> Outcome:
    """Two sweeps on PostgreSQL; one, which passes for another machine's (its trial and its
    sweep run name another host), is killed mid-trial. The survivor's watcher must fail and
    queue its trial within three heartbeats, while the survivor's own trial trains, and close
    the dead sweep's parent run."""
    outcome = Outcome(
        f"worker on another machine killed mid-trial (PostgreSQL, --heartbeat {heartbeat})",
        "its trial FAIL + queued within 3 heartbeats while the survivor trains; run and parent "
        "run KILLED; retried with same params; exact total",
    )
    reason = postgres_unreachable()
    if reason:
        outcome.lost, outcome.observed = None, f"skipped: {reason}"
        return outcome
    # Trials long enough (~10 s here) that the survivor is still in its own when the dead
    # one's is failed: that is what "found while trials train" means.
    total = 3  # the two that start together, and the dead one's retry
    exp = write_experiment(folder, epochs=10 * MID_TRIAL_EPOCHS, trials=total)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    with postgres_database("heartbeat") as storage:
        argv = sweep_argv(
            exp, "--storage", storage, "--tracking-uri", tracking, "--heartbeat", str(heartbeat)
        )
        procs = start_together(folder, 2, argv)
        victim, _ = wait_until(lambda: two_running(storage, completed=0), 300, "two mid-way")
        by_pid = {p.pid: p for p in procs}
        victim_proc = by_pid[victim.user_attrs[OWNER_ATTR]["pid"]]
        survivor_proc = next(p for p in procs if p is not victim_proc)
        # Pretend it runs on another machine: no process check can see it die, only the
        # heartbeat can; its sweep run too is owned by "another machine".
        owner = dict(victim.user_attrs[OWNER_ATTR], host="another-machine")
        study = load_study(storage)
        study._storage.set_trial_user_attr(victim._trial_id, OWNER_ATTR, owner)
        parent = sweep_run_of(tracking, victim_proc.pid)
        MlflowClient(tracking).set_tag(parent.info.run_id, OWNER_ATTR, json.dumps(owner))
        before = snapshot(storage, tracking)
        killed_at = time.monotonic()
        victim_proc.stop(signal.SIGKILL)
        wait_until(lambda: state_of(storage, victim.number) == TrialState.FAIL, 120, "its FAIL")
        seconds = time.monotonic() - killed_at
        training = trains(storage, survivor_proc.pid)
        outcome.check(
            seconds <= 3 * heartbeat, f"failed {seconds:.1f} s after the kill (> 3 heartbeats)"
        )
        outcome.check(training, "the survivor was between trials: not found while training")
        wait_until(
            lambda: MlflowClient(tracking).get_run(parent.info.run_id).info.status == "KILLED",
            60,
            "the dead sweep's parent run closed",
        )
        code = survivor_proc.wait(600)
        outcome.check(code == 0, f"the survivor exited {code}: {survivor_proc.stderr()[-400:]}")
        _no_traceback(outcome, survivor_proc, "survivor")
        outcome.check(
            f"trial {victim.number}: no heartbeat" in survivor_proc.stderr(),
            f"the survivor did not say it: {survivor_proc.stderr()[-400:]}",
        )
        summary = _check_recovered(
            outcome, storage, tracking, victim.number, None, "KILLED", total, before
        )
        outcome.numbers.update(seconds=round(seconds, 1), while_training=training)
        outcome.observed = (
            f"FAIL + queued {seconds:.1f} s after the kill (survivor training: {training}); "
            f"parent run KILLED; {summary}"
        )
    return outcome


def survivor_recovers(folder: Path) -> Outcome:
    """kill -9 of one of two sweeps on one journal, mid-trial: the survivor fails and queues
    the dead one's trial while its own trains, closes the dead sweep's parent run, and ends
    the study at its total."""
    outcome = Outcome(
        "kill -9 of one of two sweeps on one journal, mid-trial",
        "survivor fails + queues its trial while training (seconds), closes its parent run, "
        "exit 0, exact total",
    )
    total = 3  # the two that start together, and the dead one's retry
    exp = write_experiment(folder, epochs=10 * MID_TRIAL_EPOCHS, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    procs = start_together(folder, 2, sweep_argv(exp))
    victim, _ = wait_until(lambda: two_running(storage, completed=0), 300, "two trials mid-way")
    by_pid = {p.pid: p for p in procs}
    victim_proc = by_pid[victim.user_attrs[OWNER_ATTR]["pid"]]
    survivor_proc = next(p for p in procs if p is not victim_proc)
    parent = sweep_run_of(tracking, victim_proc.pid)
    before = snapshot(storage, tracking)
    killed_at = time.monotonic()
    victim_proc.stop(signal.SIGKILL)
    wait_until(lambda: state_of(storage, victim.number) == TrialState.FAIL, 120, "its FAIL")
    seconds = time.monotonic() - killed_at
    training = trains(storage, survivor_proc.pid)
    outcome.check(training, "the survivor was between trials: not found while training")
    wait_until(
        lambda: MlflowClient(tracking).get_run(parent.info.run_id).info.status == "KILLED",
        60,
        "the dead sweep's parent run closed",
    )
    code = survivor_proc.wait(600)
    outcome.check(code == 0, f"the survivor exited {code}: {survivor_proc.stderr()[-400:]}")
    _no_traceback(outcome, survivor_proc, "survivor")
    summary = _check_recovered(
        outcome, storage, tracking, victim.number, "killed", "KILLED", total, before
    )
    outcome.numbers.update(seconds=round(seconds, 1), while_training=training)
    outcome.observed = (
        f"FAIL + queued {seconds:.1f} s after the kill (survivor training: {training}); parent "
        f"run KILLED; survivor exit {code}; {summary}"
    )
    return outcome


def worker_killed(folder: Path) -> Outcome:
    """`--workers 2`, the worker process (not the main one) killed mid-trial: the main one runs
    its trial again, the study completes, the command says so, exits 0 and names the worker."""
    outcome = Outcome(
        "kill -9 of one of two --workers processes, mid-trial",
        "the study completes; exit 0; stderr names the killed worker; no 'traceback' claimed",
    )
    total = 6
    exp = write_experiment(folder, epochs=4 * MID_TRIAL_EPOCHS, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    proc = start(folder, sweep_argv(exp, "--workers", "2"))

    def a_worker_mid_trial():
        found = two_running(storage)
        if not found:
            return None
        return next((t for t in found if t.user_attrs[OWNER_ATTR]["pid"] != proc.pid), None)

    victim = wait_until(a_worker_mid_trial, 300, "the worker process mid-trial")
    pid = victim.user_attrs[OWNER_ATTR]["pid"]
    before = snapshot(storage, tracking)
    os.kill(pid, signal.SIGKILL)
    code = proc.wait(600)
    err = proc.stderr()
    outcome.check(code == 0, f"exit {code}: {err[-400:]}")
    said = f"(pid {pid}) was killed by SIGKILL"
    outcome.check(said in err, f"stderr does not name the worker: {err[-400:]}")
    outcome.check(f"the study holds all {total} trials" in err, "it does not say it completed")
    outcome.check("traceback" not in err.lower(), "a traceback is printed or claimed")
    summary = _check_recovered(
        outcome, storage, tracking, victim.number, "killed", "KILLED", total, before
    )
    line = next((x for x in err.splitlines() if said in x), "-").removeprefix("studylib: ")
    outcome.numbers.update(exit=code)
    outcome.observed = f"exit {code}: {line}; {summary}"
    return outcome


def _last_record_start(data: bytes) -> int:
    return data.rindex(b"\n", 0, len(data) - 1) + 1


def torn_journal(folder: Path) -> list[Outcome]:
    """A finished study's journal cut inside its last record (a power cut, a full disk) at
    three offsets; each time the next sweep repairs it, says so in one line, and completes."""
    total = 3
    base = folder / "base"
    base.mkdir()
    exp = write_experiment(base, epochs=2, trials=total)
    first = run(base, sweep_argv(exp))
    if first.wait() != 0:
        failed = Outcome("torn journal", "-", f"first sweep exited {first.wait()}", None)
        failed.failures.append(first.stderr()[-300:])
        return [failed]
    data = (base / "optuna.journal").read_bytes()
    start_ = _last_record_start(data)
    length = len(data) - start_
    outcomes = []
    for keep in (1, length // 2, length - 2):
        outcome = Outcome(
            f"journal torn {keep} bytes into its last record ({length}), then sweep",
            "one line naming the side file; torn bytes moved there; study completes; exit 0",
        )
        work = folder / f"cut-{keep}"
        shutil.copytree(base, work, ignore=shutil.ignore_patterns("proc-*"))
        journal = work / "optuna.journal"
        journal.write_bytes(data[: start_ + keep])
        storage, tracking = str(journal), f"sqlite:///{work / 'mlflow.db'}"
        before = snapshot(storage, tracking)  # the reader stops at the torn line
        resume = run(work, sweep_argv(exp))
        code, err = resume.wait(), resume.stderr()
        outcome.check(code == 0, f"exit {code}: {err[-300:]}")
        _no_traceback(outcome, resume, "resume")
        lines = [x for x in err.splitlines() if "torn tail repaired" in x]
        sides = sorted(work.glob("optuna.journal.torn-*"))
        outcome.check(len(lines) == 1 and len(sides) == 1, f"warnings {lines}, side files {sides}")
        if sides:
            outcome.check(lines and sides[0].name in lines[0], "the warning names no side file")
            outcome.check(sides[0].read_bytes() == data[start_ : start_ + keep], "side file bytes")
        outcome.check(
            all(is_record(x) for x in journal.read_bytes().splitlines(keepends=True)),
            "the journal is not whole records",
        )
        trials = trials_of(storage)
        done = counted(trials)
        outcome.check(done == total, f"{done} of {total} trials")
        gone = lost(before, snapshot(storage, tracking))
        outcome.lost = len(gone) + max(0, total - done)
        outcome.numbers.update(keep=keep, done=done, exit=code)
        outcome.observed = (
            f"exit {code}; '{lines[0].split(': ', 2)[-1][:90] if lines else '-'}...'; "
            f"{done}/{total} trials"
        )
        outcomes.append(outcome)
    return outcomes


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[str | None]:
    """A tmpfs of `size` mounted at `folder` (root only); yields None where none can be made."""
    folder.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if made.returncode != 0:
        yield None
        return
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (2**20, 4096, 512, 64, 1):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


def disk_full(folder: Path) -> Outcome:
    """The journal's disk fills mid-sweep (a tmpfs filled to the last byte while a trial
    trains): one line and exit 2, no torn record; a sweep on the full disk is refused before
    it writes; with space again, the resume completes."""
    outcome = Outcome(
        "the journal's disk fills mid-trial, then space is freed",
        "exit 2, one error line, no traceback, no torn record; refused while full; resume "
        "completes",
    )
    total = 4
    exp = write_experiment(folder, epochs=4 * MID_TRIAL_EPOCHS, trials=total)
    with small_disk(folder / "disk", "80m") as disk:
        if disk is None:
            outcome.lost, outcome.observed = None, "skipped: cannot mount a tmpfs (needs root)"
            return outcome
        storage, tracking = (
            str(folder / "disk" / "optuna.journal"),
            f"sqlite:///{folder / 'mlflow.db'}",
        )
        argv = sweep_argv(exp, "--storage", storage)
        proc = start(folder, argv)
        wait_until(lambda: running_mid_trial(storage), 300, "a trial mid-way")
        before = snapshot(storage, tracking)
        filler = fill(folder / "disk")
        code = proc.wait(300)
        err = proc.stderr()
        errors = [x for x in err.splitlines() if x.startswith("studylib: error:")]
        outcome.check(code == 2, f"exit {code}: {err[-400:]}")
        _no_traceback(outcome, proc, "sweep")
        outcome.check(len(errors) == 1 and "no space" in errors[0], f"error lines {errors}")
        journal = Path(storage).read_bytes()
        outcome.check(
            journal.endswith(b"\n") and all(is_record(x) for x in journal.splitlines(True)),
            "the journal holds a torn record",
        )
        refused = run(folder, argv)
        outcome.check(refused.wait() == 2, f"on a full disk the sweep exited {refused.wait()}")
        outcome.check("is full" in refused.stderr(), f"refusal: {refused.stderr()[-300:]}")
        outcome.check(Path(storage).read_bytes() == journal, "the refused sweep wrote")
        filler.unlink()
        resume = run(folder, argv)
        outcome.check(
            resume.wait() == 0, f"resume exited {resume.wait()}: {resume.stderr()[-300:]}"
        )
        trials = trials_of(storage)
        done = counted(trials)
        outcome.check(done == total, f"{done} of {total} trials")
        gone = lost(before, snapshot(storage, tracking))
        outcome.lost = len(gone) + max(0, total - done)
        outcome.numbers.update(exit=code, done=done)
        message = errors[0].removeprefix("studylib: error: ")[:80] if errors else "-"
        outcome.observed = (
            f"exit {code}: '{message}...'; journal whole; full-disk sweep refused (exit "
            f"{refused.wait()}); resume {done}/{total} trials"
        )
    return outcome


def lost_records(folder: Path) -> Outcome:
    """MLflow's records lost (a zero-byte mlflow.db) after a sweep that also holds a trial that
    crashed before its run existed: the report lists that trial; the next sweep re-logs every
    finished trial from Optuna and says so; the report lists them all."""
    outcome = Outcome(
        "zero-byte mlflow.db (every record lost), a trial crashed before its run existed",
        "report lists the run-less trial; sweep re-logs all from Optuna, names them, exit 0",
    )
    total = 3
    exp = write_experiment(folder, epochs=3, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    first = run(folder, sweep_argv(exp))
    outcome.check(first.wait() == 0, f"first sweep exited {first.wait()}")
    # A trial that crashed before its MLflow run existed (what an older studylib left when a
    # sampled value failed validation): FAIL in Optuna, no run anywhere.
    writer = optuna.load_study(study_name=STUDY, storage=make_storage(storage))
    done_trial = [t for t in writer.trials if t.state == TrialState.COMPLETE][-1]
    writer.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params=done_trial.params,
            distributions=done_trial.distributions,
            user_attrs={FAILURE_ATTR: "crashed", REASON_ATTR: "ValidationError: lr above 10"},
        )
    )
    crashed = len(writer.trials) - 1
    values = {t.number: t.value for t in trials_of(storage) if t.state == TrialState.COMPLETE}
    report = run(folder, ["report", "--out", str(folder / "r1")])
    text = (folder / "r1" / STUDY / "report.md").read_text() if report.wait() == 0 else ""
    listed = (
        text.split("## Trials without an MLflow run")[-1] if "without an MLflow" in text else ""
    )
    outcome.check(f"| {STUDY} | {crashed} | FAIL | crashed |" in listed, "report misses it")
    (folder / "mlflow.db").write_bytes(b"")
    for extra in ("mlflow.db-wal", "mlflow.db-shm"):
        (folder / extra).unlink(missing_ok=True)
    again = run(folder, sweep_argv(exp))
    err = again.stderr()
    outcome.check(again.wait() == 0, f"sweep exited {again.wait()}: {err[-300:]}")
    said = [x for x in err.splitlines() if "re-logged from Optuna" in x]
    numbers = ", ".join(str(n) for n in sorted([*values, crashed]))
    outcome.check(said and f"trials {numbers} had no MLflow run" in said[0], f"said {said}")
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in trial_runs(tracking)}
    outcome.check(sorted(runs) == sorted([*values, crashed]), f"runs of trials {sorted(runs)}")
    wrong = [
        n
        for n, value in values.items()
        if n not in runs or abs(runs[n].data.metrics.get("selected_val_loss", -1) - value) > 1e-9
    ]
    outcome.check(runs.get(0) and runs[0].data.tags.get("studylib.baseline") == "true", "baseline")
    outcome.check(
        crashed in runs and runs[crashed].data.tags.get("studylib.status") == "crashed",
        "the crashed trial's run",
    )
    report = run(folder, ["report", "--out", str(folder / "r2")])
    text = (folder / "r2" / STUDY / "report.md").read_text() if report.wait() == 0 else ""
    outcome.check("## Trials re-logged from Optuna" in text, "report does not list them")
    outcome.check(f"| {crashed} | crashed |" in text, "report misses the crashed trial")
    outcome.lost = len(wrong)
    outcome.observed = (
        f"report before: trial {crashed} listed without a run; sweep exit {again.wait()}: "
        f"'{said[0].removeprefix('studylib: ')[:70] if said else '-'}...'; "
        f"{len(runs)} runs, values equal: {not wrong}; report lists them"
    )
    return outcome


def writer_kill(folder: Path, both: bool = False) -> Outcome:
    """kill -9 of a sweep's writer process (studylib/sweep/writer.py: it writes the trainer's
    MLflow records and tells Optuna how trials ended) mid-sweep, alone or together with its
    trainer. Alone: the trainer starts another writer, which writes again what was not
    acknowledged, and the sweep ends at its total. Both: a resume ends the study. Either way
    nothing told before the kill changes, and nothing is left RUNNING in either system."""
    what = "the writer and its trainer at once" if both else "the writer alone"
    outcome = Outcome(
        f"kill -9 of {what} mid-sweep" + (", then resume" if both else ""),
        "no finished trial loses records; exact total; no trial or run left RUNNING",
    )
    folder.mkdir(parents=True, exist_ok=True)
    total = 6
    exp = write_experiment(folder, epochs=MID_TRIAL_EPOCHS, trials=total)
    storage, tracking = str(folder / "optuna.journal"), f"sqlite:///{folder / 'mlflow.db'}"
    proc = start(folder, sweep_argv(exp))
    victim = wait_until(lambda: running_mid_trial(storage, completed=2), 240, "mid-trial")
    writer = victim.user_attrs[OWNER_ATTR].get("writer")
    outcome.check(writer is not None, "the running trial names no writer process")
    before = snapshot(storage, tracking)  # trials told before the kill: their records stay
    if writer is not None:
        os.kill(writer["pid"], signal.SIGKILL)
    if both:
        os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait(300)
    if both:
        outcome.check(code == -signal.SIGKILL, f"exit {code}")
        resume = run(folder, sweep_argv(exp))
        outcome.check(
            resume.wait() == 0, f"resume exited {resume.wait()}: {resume.stderr()[-300:]}"
        )
    else:
        outcome.check(code == 0, f"the sweep exited {code}: {proc.stderr()[-300:]}")
        outcome.check("started another" in proc.stderr(), "no note of the writer's restart")
    trials = trials_of(storage)
    outcome.check(not [t for t in trials if t.state == TrialState.RUNNING], "trials RUNNING")
    runs = trial_runs(tracking)
    open_runs = [r for r in runs if r.info.status == "RUNNING"]
    outcome.check(not open_runs, f"{len(open_runs)} MLflow runs left RUNNING")
    done = counted(trials)
    outcome.check(done == total, f"{done} of {total} trials")
    after = snapshot(storage, tracking)
    gone = lost(before, after)
    # Every completed trial, before the kill or after it, has its whole curve in MLflow.
    short = [
        n
        for n, rec in after.items()
        if rec.run_status != "FINISHED" or rec.points != MID_TRIAL_EPOCHS
    ]
    outcome.check(not short, f"completed trials without their whole run: {short}")
    outcome.lost = len(gone) + max(0, total - done)
    outcome.numbers.update(exit=code, done=done, completed_before=len(before), victim=victim.number)
    outcome.observed = (
        f"killed writer pid {writer and writer['pid']}"
        + (f" and trainer pid {proc.pid}" if both else "")
        + f" mid trial {victim.number} ({len(before)} told before); {done}/{total} trials; "
        f"{len(open_runs)} runs RUNNING; lost {len(gone)}"
    )
    return outcome


SCENARIOS: dict[str, Callable[[Path], Outcome | list[Outcome]]] = {
    "interruptions": interruptions,
    "population": lambda folder: [
        population_kill(folder / "one", workers=1),
        population_kill(folder / "two", workers=2, population=2),
    ],
    "writer": lambda folder: [
        writer_kill(folder / "writer", both=False),
        writer_kill(folder / "both", both=True),
    ],
    "diverging": diverging,
    "workers": workers_together,
    "postgres": postgres_workers,
    "heartbeat": postgres_heartbeat,
    "survivor": survivor_recovers,
    "worker_killed": worker_killed,
    "torn": torn_journal,
    "disk_full": disk_full,
    "lost_records": lost_records,
    "tracking": tracking_down,
    "mismatch": mismatch,
    "secrets": lambda folder: secrets_scenario(folder),
    "bad_input": bad_input,
}


def print_table(outcomes: list[Outcome]) -> None:
    header = ("scenario", "expected", "observed", "trials lost")
    rows = [
        (
            o.scenario,
            o.expected,
            o.observed + ("" if not o.failures else f" [FAILED: {'; '.join(o.failures)}]"),
            "-" if o.lost is None else str(o.lost),
        )
        for o in outcomes
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run these only")
    parser.add_argument("--keep", action="store_true", help="keep the scenario folders")
    args = parser.parse_args(argv)
    outcomes: list[Outcome] = []
    root = Path(tempfile.mkdtemp(prefix="studylib-faults-"))
    for name in args.only or list(SCENARIOS):
        folder = root / name
        folder.mkdir()
        started = time.monotonic()
        print(f"faults: {name} ...", file=sys.stderr, flush=True)
        try:
            result = SCENARIOS[name](folder)
        except Exception as exc:  # a scenario that breaks is a row, not the end of the table
            result = Outcome(name, "-", f"scenario error: {type(exc).__name__}: {exc}", None)
            result.failures.append("scenario error")
        for outcome in result if isinstance(result, list) else [result]:
            outcomes.append(outcome)
        print(f"faults: {name} took {time.monotonic() - started:.0f} s", file=sys.stderr)
    print_table(outcomes)
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"scenario folders kept in {root}", file=sys.stderr)
    failed = [o.scenario for o in outcomes if o.failures or (o.lost or 0) > 0]
    print(
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else ""),
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
