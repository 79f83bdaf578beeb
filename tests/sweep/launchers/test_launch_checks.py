"""Launchers without an engine: [launcher] config, guard rails, secrets, owners, the dry run.

These run in the default suite (no Slurm, no Ray needed; the dry run needs submitit and
skips without it). The engines themselves are exercised by test_engines.py (`make
test-engines`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from dataclasses import replace

import pytest
from conftest import write_toml

from studylib import cli
from studylib.config import load_experiment, load_launcher
from studylib.errors import (
    ConfigError,
    Interrupted,
    checkpoint,
    pending_signal,
    stop_on_signals,
)
from studylib.names import OWNER_ATTR, REASON_TAG, ROLE_TAG
from studylib.sweep.launchers.common import (
    Launch,
    Secrets,
    WorkerSpec,
    absolute,
    check_reachable,
    masked,
    unmasked,
)
from studylib.sweep.owners import JobOwner, slurm_job_state
from studylib.sweep.recovery import Worker, close_dead_sweeps
from studylib.sweep.study import study_settings
from studylib.tracking import open_tracker

SECRET = "hunter22-secret"
REMOTE_PG = f"postgresql://optuna:{SECRET}@dbhost.example:5432/optuna"
REMOTE_MLFLOW = "http://trackinghost.example:5000"

EXPERIMENT = """
name = "tiny"
[model]
arch = "mlp"
hidden = [8]
[train]
max_epochs = 2
[sweep]
trials = 4
[sweep.search.dropout]
low = 0.0
high = 0.5
"""


def test_launcher_table_is_read_apart_and_never_part_of_the_study(tmp_path):
    """Changing where a sweep runs must not refuse its resume: [launcher] is not a setting
    the study stores, nor a param a run logs."""
    plain = write_toml(tmp_path / "a.toml", EXPERIMENT)
    launched = write_toml(
        tmp_path / "b.toml",
        EXPERIMENT
        + '[launcher.slurm]\npartition = "gpu"\ntime = 30\n[launcher.ray]\nnum_gpus = 0.5\n',
    )
    a, b = load_experiment(plain), load_experiment(launched)
    assert study_settings(a) == study_settings(b)
    assert not any(key.startswith("launcher") for key in b.flat())
    config = load_launcher(launched, {"slurm.time": 45})
    assert (config.slurm.partition, config.slurm.time, config.ray.num_gpus) == ("gpu", 45, 0.5)
    assert load_launcher(plain).slurm.time == 60  # the default


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            "[launcher.slurm]\nwalltime = 5\n",
            "launcher.slurm.walltime: unknown key; allowed here: partition, time,",
        ),
        (
            "[launcher.slurm]\ntime = 0\n",
            "launcher.slurm.time = 0: Input should be greater than or equal to 1",
        ),
        (
            "[launcher.ray]\nnum_gpus = 1.5\n",
            "launcher.ray.num_gpus = 1.5: 1.5: above 1, GPUs per worker must be a whole number",
        ),
        ('[launcher.slurm]\nsbatch = {"--bad key" = 1}\n', "is not an sbatch option name"),
    ],
)
def test_bad_launcher_table_is_one_line_naming_file_and_field(tmp_path, table, expected):
    path = write_toml(tmp_path / "x.toml", EXPERIMENT + table)
    with pytest.raises(ConfigError) as caught:
        load_launcher(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(path))


def slurm(**values) -> Launch:
    return Launch(kind="slurm", jobs=2, **values)


@pytest.mark.parametrize(
    ("storage", "tracking", "flag", "names"),
    [
        (
            "optuna.journal",
            REMOTE_MLFLOW,
            "--storage",
            "a file on a folder other machines do not mount",
        ),
        (
            "sqlite:///optuna.db",
            REMOTE_MLFLOW,
            "--storage",
            "SQLite locks under parallel Optuna workers",
        ),
        (REMOTE_PG, "sqlite:///mlflow.db", "--tracking-uri", "use http://TRACKINGHOST:5000"),
        (REMOTE_PG, "http://127.0.0.1:5000", "--tracking-uri", "127.0.0.1 is this machine only"),
        (
            "postgresql://optuna@localhost/optuna",
            REMOTE_MLFLOW,
            "--storage",
            "localhost is this machine only",
        ),
        ("postgresql:///optuna", REMOTE_MLFLOW, "--storage", "a local socket of this machine"),
    ],
)
def test_a_location_only_this_machine_reaches_is_refused(settings, storage, tracking, flag, names):
    given = replace(settings, storage=storage, tracking_uri=tracking)
    with pytest.raises(ConfigError) as caught:
        check_reachable(given, slurm())
    message = str(caught.value)
    assert message.startswith(f"{flag} = ") and names in message
    assert "\n" not in message and SECRET not in message
    assert ("--one-machine" in message) == ("SQLite" not in message)  # SQLite: never


def test_guard_rails_yield_to_what_the_user_says(settings):
    local_files = replace(settings, storage="optuna.journal")
    loopback = replace(settings, storage=REMOTE_PG, tracking_uri="http://127.0.0.1:5000")
    check_reachable(local_files, slurm(one_machine=True))
    check_reachable(loopback, slurm(one_machine=True))
    check_reachable(replace(local_files, tracking_uri=REMOTE_MLFLOW), slurm(shared_folder=True))
    with pytest.raises(ConfigError):  # a shared folder says nothing about 127.0.0.1
        check_reachable(loopback, slurm(shared_folder=True))
    check_reachable(replace(settings, storage=REMOTE_PG, tracking_uri=REMOTE_MLFLOW), slurm())
    check_reachable(local_files, Launch(kind="ray", jobs=2))  # a Ray started here: one machine
    check_reachable(local_files, Launch(kind="local", jobs=2))


def test_passwords_travel_masked_and_arrive_through_the_secret_channel(settings, tiny):
    real = replace(settings, storage=REMOTE_PG, tracking_uri=f"http://u:{SECRET}@host:5000")
    spec = WorkerSpec(tiny, masked(real), 4, "parent", 1, 1, 0)
    assert SECRET not in repr(spec) and "***" in spec.settings.storage
    secrets = Secrets.of(real)
    assert secrets is not None and Secrets.of(settings) is None
    arrived = unmasked(spec, secrets)
    assert (arrived.storage, arrived.tracking_uri) == (real.storage, real.tracking_uri)
    with pytest.raises(ConfigError, match="did not reach this worker"):
        unmasked(spec, None)
    other = Secrets(REMOTE_PG.replace("dbhost", "otherhost"), secrets.tracking_uri)
    with pytest.raises(ConfigError, match="two sweeps' settings mixed"):
        unmasked(spec, other)


def test_absolute_locations_for_workers_that_start_elsewhere(tmp_path, monkeypatch, settings):
    monkeypatch.chdir(tmp_path)
    given = replace(settings, storage="optuna.journal", tracking_uri="sqlite:///mlflow.db")
    made = absolute(given)
    assert made.storage == str(tmp_path / "optuna.journal")
    assert made.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert made.cache_dir.is_absolute() and made.artifact_root.is_absolute()


def test_usr2_becomes_interrupted_only_where_asked():
    with pytest.raises(Interrupted) as caught, stop_on_signals(also=(signal.SIGUSR2,)):
        os.kill(os.getpid(), signal.SIGUSR2)
        signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    assert str(caught.value) == "SIGUSR2" and caught.value.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # restored


def test_at_safe_points_a_signal_waits_for_the_next_checkpoint():
    """A launched worker's stop signal must not land inside a database commit: it is noted,
    and raised where nothing is half-written."""
    with stop_on_signals(also=(signal.SIGUSR2,), at_safe_points=True):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)  # the handler has run: nothing was raised here
        assert pending_signal() == signal.SIGUSR2
        with pytest.raises(Interrupted) as caught:
            checkpoint()
        assert caught.value.signum == signal.SIGUSR2
        checkpoint()  # raised once
    assert pending_signal() is None


def test_job_owner_round_trip_and_a_process_is_not_a_job():
    owner = JobOwner("slurm", "12", "cluster-a")
    assert JobOwner.from_attr(json.loads(json.dumps(owner.as_attr()))) == owner
    assert JobOwner.from_attr(Worker.current().as_attr()) is None
    assert Worker.from_attr(owner.as_attr()) is None
    assert JobOwner.from_attr({"engine": "kubernetes", "job": "x", "where": "y"}) is None


def test_slurm_owner_is_unknown_where_slurm_cannot_be_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol, no squeue
    assert slurm_job_state(JobOwner("slurm", "12", "cluster-a")) == "unknown"


def test_a_parent_owned_by_a_job_is_closed_only_when_its_engine_says_gone(
    tiny, settings, monkeypatch
):
    tracker = open_tracker(tiny, settings)
    owner = JobOwner("slurm", "12", "cluster-a")
    run = tracker.start_run(
        "sweep-x", tags={ROLE_TAG: "sweep", OWNER_ATTR: json.dumps(owner.as_attr())}
    )
    for answer in ("alive", "unknown"):
        monkeypatch.setattr(JobOwner, "state", lambda self, a=answer: a)
        assert close_dead_sweeps(tracker) == []
        assert tracker.run_states("sweep")[run.run_id] == "RUNNING"
    monkeypatch.setattr(JobOwner, "state", lambda self: "gone")
    notes = close_dead_sweeps(tracker)
    assert notes == [
        "sweep run sweep-x: its Slurm job 12 on cluster cluster-a has ended; closed as KILLED"
    ]
    closed = tracker.client.get_run(run.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[REASON_TAG] == "its Slurm job 12 on cluster cluster-a has ended"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "slurm", "--jobs", "2"], "--storage = "),
        (
            ["--launcher", "ray", "--partition", "gpu"],
            "--partition is a --launcher slurm option, not ray",
        ),
        (
            ["--launcher", "slurm", "--ray-gpus", "0.5"],
            "--ray-gpus is a --launcher ray option, not slurm",
        ),
        (["--detach"], "--detach needs --launcher slurm or ray"),
        (["--launcher", "slurm", "--time", "0", "--one-machine"], "launcher.slurm.time = 0"),
        (["--jobs", "3", "--workers", "2"], "--jobs = 3 and --workers = 2: give one"),
    ],
)
def test_cli_refuses_bad_launches_in_one_line_before_writing(
    tmp_path, monkeypatch, capsys, flags, message
):
    monkeypatch.chdir(tmp_path)
    path = write_toml(tmp_path / "tiny.toml", EXPERIMENT)
    code, _, err = run_cli(["sweep", str(path), "--no-progress", *flags], capsys)
    assert code == cli.EXIT_BAD_INPUT
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # nothing written


@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit not installed")
def test_dry_run_prints_the_sbatch_script_with_passwords_masked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_toml(
        tmp_path / "tiny.toml",
        EXPERIMENT
        + f'[launcher.slurm]\npartition = "debug"\ntime = 30\nsetup = ["export X=1 # {SECRET}"]\n',
    )
    code, out, err = run_cli(
        [
            "sweep",
            str(path),
            "--launcher",
            "slurm",
            "--jobs",
            "3",
            "--dry-run",
            "--storage",
            REMOTE_PG,
            "--tracking-uri",
            REMOTE_MLFLOW,
            "--mem",
            "1.5",
            "--sbatch",
            "account=proj",
            "--time",
            "45",
        ],
        capsys,
    )
    assert code == 0, err
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --partition=debug",
        "#SBATCH --time=45",
        "#SBATCH --mem=1536MB",
        "#SBATCH --account=proj",
        "#SBATCH --signal=USR2@90",
        f"#SBATCH --output={tmp_path}/slurm-logs/%A_%a/%A_%a_0_log.out",
        "-m submitit.core._submit",
    ):
        assert line in out, out
    assert SECRET not in out + err and "***" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # nothing submitted


@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit not installed")
def test_dry_run_shows_the_ablation_workers_too(tmp_path, monkeypatch, capsys):
    """An [ablation] is launched like the sweep (its units claimed by the workers): the dry run
    prints both submissions; an ablation alone is no longer refused."""
    monkeypatch.chdir(tmp_path)
    ablation = '[ablation]\nseeds = [0, 1]\narms = ["baseline", "dropout"]\n'
    both = write_toml(tmp_path / "tiny.toml", EXPERIMENT + ablation)
    alone = write_toml(tmp_path / "alone.toml", EXPERIMENT.replace("trials = 4", "trials = 0"))
    alone.write_text(alone.read_text() + ablation)
    where = ["--storage", REMOTE_PG, "--tracking-uri", REMOTE_MLFLOW]
    for path, scripts in ((both, 2), (alone, 1)):
        code, out, err = run_cli(
            ["sweep", str(path), "--launcher", "slurm", "--jobs", "2", "--dry-run", *where],
            capsys,
        )
        assert code == 0, err
        assert out.count("#SBATCH --array=0-1%2") == scripts, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.toml", "tiny.toml"]
