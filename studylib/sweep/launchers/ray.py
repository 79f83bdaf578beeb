"""`--launcher ray`: the workers as Ray tasks, on a running cluster or on a Ray started here.

One task is one worker (`run_worker`, the trial loop every sweep process runs), with
`num_cpus` (also its torch threads) and `num_gpus` (0.5: two workers share a card) from
`[launcher.ray]` or the flags. A worker whose process or node dies is started again by Ray
(`max_retries`); the trial it was on is failed and queued again through the storage (the
RDB heartbeat, or the process check on one machine), never by Ray, so nothing is run twice or
lost whichever of the two notices first.

- No address: Ray is started here, for this command, with every server (GCS, raylet, object
  manager, agents, dashboard if asked) on 127.0.0.1 unless `[launcher.ray] host` says
  otherwise, and token authentication with a token file only this user can read.
- `--ray-address auto | HOST:PORT | ray://HOST:10001`: a running cluster; studylib must be
  installed on its nodes.
- `--detach` (a running cluster only): a detached actor drives the workers in the cluster, so
  the command can return; it owns the sweep's parent run, and dead-owner recovery asks the
  cluster whether it still lives (owners.py).

Passwords: a Ray task's arguments and `runtime_env` can be read by anyone who reaches the
cluster (the dashboard, `ray list`); the storage and tracking URLs travel masked, and their
passwords through the object store (`ray.put`), whose contents no listing shows.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from studylib.config import RayConfig
from studylib.errors import ConfigError
from studylib.locations import is_loopback
from studylib.redact import redact
from studylib.sweep.launchers.common import (
    FleetState,
    Secrets,
    WorkerSpec,
    close_parent,
    run_worker,
    unmasked,
)
from studylib.sweep.owners import JobOwner
from studylib.sweep.workers import machine_cores
from studylib.tracking import open_tracker

NAMESPACE = "studylib"
INSTALL = "pip install 'studylib[ray]'"
CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")  # written by `ray start`, read by "auto"
CONNECT_SECONDS = 5.0


def ray_worker(spec: WorkerSpec, secrets: Secrets | None) -> dict:
    """The body of one worker task (Ray calls it in a worker process of some node)."""
    return run_worker(spec, secrets)


def check_installed() -> None:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--launcher ray needs Ray: {INSTALL}")


def import_ray() -> Any:
    """Ray, imported only once the environment is set: it reads RAY_AUTH_MODE and the other
    switches when it is imported, not when a cluster is started."""
    check_installed()
    import ray  # optional dependency: the ray extra

    return ray


def address_host(address: str) -> str | None:
    """The host part of a Ray address (HOST:PORT or ray://HOST:PORT)."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]") or None


def auto_address() -> str | None:
    """What `ray.init("auto")` would reach: RAY_ADDRESS, else the cluster this machine started
    last; None when there is neither."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        return CLUSTER_FILE.read_text().strip() or None
    except OSError:
        return None


def answers(address: str) -> bool:
    """Whether something listens at HOST:PORT (a stale cluster file makes ray.init hang for
    minutes retrying a dead GCS: asked first, in seconds)."""
    host, port = address_host(address), address.rsplit(":", 1)[-1]
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), CONNECT_SECONDS):
            return True
    except (OSError, ValueError):
        return False


def loopback_client_environment(address: str | None) -> None:
    """A client of a cluster on 127.0.0.1 must keep 127.0.0.1: without this Ray on Linux swaps
    it for the machine's routable address, which the cluster does not listen on, and hangs."""
    host = address_host(address) if address else None
    if host and is_loopback(host):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@functools.cache
def process_token() -> Path:
    """The token of every Ray this process starts here, in a folder only this user can read
    (ray.init would otherwise write ~/.ray/auth_token, readable by all, which then also switches
    every later `ray start` to tokens), removed when the process exits. One per process: Ray
    reads its token once, so a second Ray started by the same command (an experiment's
    [ablation] after its sweep, a group file's next member) must be started with the same."""
    folder = tempfile.mkdtemp(prefix="studylib-ray-")  # mode 0700
    atexit.register(shutil.rmtree, folder, True)
    token = Path(folder) / "auth_token"
    token.touch(mode=0o600)
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    return token


class RayEngine:
    def __init__(self, config: RayConfig, jobs: int, job_name: str, detach: bool = False):
        check_installed()
        self.ray: Any = None  # imported by connect(), after the environment is set
        self.config = config
        self.jobs = jobs
        self.job_name = job_name
        self.detach = detach

    def check(self) -> None:
        """Bad Ray settings as one line, before anything is written."""
        config = self.config
        if config.address is None:
            if self.detach:
                raise ConfigError(
                    "--detach with --launcher ray needs a running cluster (--ray-address): a "
                    "Ray started here ends with this command"
                )
            cores = machine_cores()
            if self.jobs * config.num_cpus > cores:
                raise ConfigError(
                    f"--jobs = {self.jobs} with {config.num_cpus:g} CPUs each: this machine "
                    f"gives {cores} cores; allowed up to {int(cores // config.num_cpus)} "
                    "workers (more only wait)"
                )
        elif config.address == "auto":
            found = auto_address()
            if found is None:
                raise ConfigError(
                    "--ray-address = auto: no Ray cluster found (no RAY_ADDRESS, no cluster "
                    "started on this machine); start one (ray start --head) or give its address"
                )
            if "://" not in found and not answers(found):
                raise ConfigError(
                    f"--ray-address = auto: the Ray cluster at {found} does not answer (a "
                    "stopped cluster's address file); start one or give the address"
                )

    def connect(self) -> str | None:
        """Join the cluster (or start one here); its dashboard's address, if it runs one."""
        config = self.config
        if config.address is None:
            return self.start_here()
        address = auto_address() if config.address == "auto" else config.address
        loopback_client_environment(address)
        self.ray = ray = import_ray()
        if ray.is_initialized():  # a group file's previous member, detached, kept it
            return None
        context = ray.init(address=config.address, namespace=NAMESPACE, log_to_driver=False)
        return getattr(context, "dashboard_url", None) or None

    def start_here(self) -> str | None:
        """Ray on this machine for this command: loopback, token authentication."""
        config = self.config
        if is_loopback(config.host):
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.pop("RAY_ADDRESS", None)  # "local" must start one, not join another
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        token = process_token()
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        self.ray = import_ray()
        context = self.ray.init(
            address="local",
            num_cpus=machine_cores(),
            include_dashboard=config.dashboard,
            dashboard_host=config.host,
            namespace=NAMESPACE,
            log_to_driver=False,
        )
        return getattr(context, "dashboard_url", None) or None

    def options(self) -> dict[str, Any]:
        config = self.config
        return {
            "num_cpus": config.num_cpus,
            "num_gpus": config.num_gpus,
            "max_retries": config.max_retries,
            "retry_exceptions": False,  # a worker that raised has a reason: no blind rerun
            "name": self.job_name,
        }

    def worker_spec(self, spec: WorkerSpec) -> WorkerSpec:
        return replace(spec, threads=max(1, int(self.config.num_cpus)))

    def submit(self, spec: WorkerSpec, secrets: Secrets | None) -> RayFleet:
        self.check()
        dashboard = self.connect()
        ray = self.ray
        spec = self.worker_spec(spec)
        secret_ref = ray.put(secrets)  # a top-level argument: each task gets the value
        address = self.config.address or "a Ray started here"
        if self.config.address == "auto":
            address = ray.get_runtime_context().gcs_address
        if self.detach:
            name = f"{self.job_name}-{uuid.uuid4().hex[:8]}"
            driver = (
                ray.remote(Supervisor)
                .options(name=name, lifetime="detached", num_cpus=0, max_restarts=0)
                .remote()
            )
            # Returns once the actor holds the passwords itself: the object this process put
            # goes when this process does.
            ray.get(driver.accept.remote(spec, secret_ref, self.jobs, self.options()))
            driver.drive.remote()
            owner = JobOwner("ray", name, address, NAMESPACE)
            return RayFleet(
                self, [], f"Ray job {name} ({self.jobs} workers) at {address}", owner, dashboard
            )
        task = ray.remote(ray_worker).options(**self.options())
        refs = [task.remote(spec, secret_ref) for _ in range(self.jobs)]
        where = address if self.config.address else "a Ray started on this machine (127.0.0.1)"
        return RayFleet(self, refs, f"{self.jobs} Ray tasks on {where}", None, dashboard)

    def dry_run(self, spec: WorkerSpec) -> str:
        spec = self.worker_spec(spec)
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        where = self.config.address or f"a Ray started here on {self.config.host}"
        what = (
            f"the [ablation] units of {spec.exp.name}"
            if spec.part == "ablation"
            else f"study {spec.exp.name}"
        )
        return (
            f"ray: {self.jobs} tasks of studylib.sweep.launchers.ray.ray_worker on {where} "
            f"({options}), each the trial loop of {what} with {spec.threads} "
            f"torch threads, storage {redact(spec.settings.storage)}, tracking "
            f"{redact(spec.settings.tracking_uri)}"
            + (", driven by a detached actor" if self.detach else "")
        )

    def shutdown(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()


class RayFleet:
    """The worker tasks of one launch (none when a detached actor drives them)."""

    def __init__(
        self,
        engine: RayEngine,
        refs: list[Any],
        describe: str,
        owner: JobOwner | None,
        dashboard: str | None,
    ):
        self.engine = engine
        self.ray = engine.ray
        self.refs = refs
        self.describe = describe
        self.owner = owner
        self.dashboard = dashboard
        self.seen: set[Any] = set()

    def poll(self) -> FleetState:
        return poll_tasks(self.ray, self.refs, self.seen)

    def stop_pending(self) -> None:
        # Nothing to stop: a task that starts after the study is complete claims nothing and
        # returns at once (loops.trial_loop), so pending tasks end by themselves.
        return None

    def cancel(self) -> None:
        cancel_tasks(self.ray, self.refs)

    def watch_hint(self) -> list[str]:
        hint = [self.describe]
        if self.dashboard:
            hint.append(f"Ray dashboard: http://{self.dashboard}")
        if self.owner is not None:
            hint.append(
                f"stop it: ray.kill(ray.get_actor({self.owner.job!r}, namespace={NAMESPACE!r}))"
                " (its workers end with it; their trials run again)"
            )
        return hint

    def close(self) -> None:
        self.engine.shutdown()


def poll_tasks(ray: Any, refs: list[Any], seen: set[Any]) -> FleetState:
    """Alive tasks, and a note for each that ended since the last look."""
    if not refs:
        return FleetState(alive=0)
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    state = FleetState(alive=len(pending))
    for ref in ready:
        if ref in seen:
            continue
        seen.add(ref)
        try:
            report = ray.get(ref, timeout=0)
        except ray.exceptions.RayTaskError as exc:  # the worker raised
            cause = str(exc.cause if getattr(exc, "cause", None) else exc)
            state.crashed = redact(cause.strip().splitlines()[-1] if cause.strip() else "")[:300]
            state.notes.append(f"a worker failed: {state.crashed}")
            continue
        except ray.exceptions.RayError as exc:  # its process or node died, retries spent
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            state.notes.append(
                f"a worker was lost ({type(exc).__name__}: {redact(first)[:200]}); its trial, "
                "if any, runs again"
            )
            continue
        stopped = report.get("stopped_by")
        note = f"a worker on {report.get('host')} (pid {report.get('pid')}) "
        note += f"stopped by {stopped}" if stopped else f"ended after {report.get('ran')} trials"
        state.notes.append(note)
    return state


def cancel_tasks(ray: Any, refs: list[Any]) -> None:
    """Ray's cancel raises KeyboardInterrupt in each running worker: it closes its trial."""
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # already finished
            continue


class Supervisor:
    """A detached actor that does in the cluster what the launching command does when it waits:
    start the workers and see them end. Made a Ray actor by `RayEngine.submit`."""

    def accept(self, spec: WorkerSpec, secrets: Secrets | None, jobs: int, options: dict) -> bool:
        self.spec, self.secrets, self.jobs, self.options = spec, secrets, jobs, options
        return True

    def drive(self) -> None:
        import ray  # optional dependency; inside the actor's process

        secret_ref = ray.put(self.secrets)  # owned by this actor, which outlives the submitter
        task = ray.remote(ray_worker).options(**self.options)
        refs = [task.remote(self.spec, secret_ref) for _ in range(self.jobs)]
        seen: set[Any] = set()
        failure = None
        while True:
            state = poll_tasks(ray, refs, seen)
            if state.crashed is not None and failure is None:
                failure = f"a worker failed, the others were stopped: {state.crashed}"
                cancel_tasks(ray, refs)
            if state.alive == 0:
                break
            time.sleep(2.0)
        # The last worker of a complete study closed the parent; one still open did not
        # complete.
        settings = unmasked(self.spec, self.secrets)
        tracker = open_tracker(self.spec.exp, settings)
        close_parent(
            tracker,
            self.spec.parent_id,
            "FAILED" if failure else "KILLED",
            failure or "every worker ended before the study was complete",
        )
        ray.actor.exit_actor()


def probe(address: str, namespace: str, name: str) -> str:
    """ "alive" when the detached actor `name` still drives a launch, else "gone"."""
    ray = import_ray()
    loopback_client_environment(auto_address() if address == "auto" else address)
    ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="ERROR")
    try:
        ray.get_actor(name)
    except ValueError:
        return "gone"
    finally:
        ray.shutdown()
    return "alive"


if __name__ == "__main__":  # owners.ray_job_state asks in a process of its own
    if len(sys.argv) == 5 and sys.argv[1] == "probe":
        print(probe(*sys.argv[2:]))
    else:
        sys.exit("usage: python -m studylib.sweep.launchers.ray probe ADDRESS NAMESPACE NAME")
