"""`--launcher slurm`: the workers as one Slurm job array, submitted through submitit.

One array task is one worker (`run_worker`, the trial loop every sweep process runs). What the
tasks get and where things are:
- resources from `[launcher.slurm]` or the flags: partition, time limit, CPUs (also the torch
  threads of the worker) and GPUs per task, memory, any other sbatch option, setup lines;
- submitit's files and each task's log under `logs/<job>_<task>/` (`slurm-logs` by default), a
  folder the nodes must read: submitit pickles the worker's arguments there (passwords
  masked; the real URLs reach the job through its environment, which sbatch passes on and
  `squeue` / `scontrol` do not show);
- signals: `scancel`, a preemption or the time limit send SIGTERM (SIGKILL follows after the
  cluster's KillWait, 30 s by default); sbatch's `--signal=USR2@<signal_delay>` warns before
  the time limit. Either closes the trial the task is on (FAIL in Optuna, KILLED in MLflow, so
  another worker runs it again). After SIGUSR2 the task requeues itself (at most
  `max_requeues` times), so a long study outlives a short time limit. submitit's own handlers
  are replaced: it would ignore SIGTERM and raise inside the trial on SIGUSR2.

The launching command watches the study in the storage and asks `squeue` which tasks still
live; submitit's `result()` of a killed task waits forever on a cluster without accounting.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
import signal
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from studylib.config import SlurmConfig
from studylib.errors import ConfigError
from studylib.redact import redact
from studylib.sweep.launchers.common import (
    POLL_SECONDS,
    FleetState,
    Secrets,
    WorkerSpec,
    environment,
    run_worker,
)
from studylib.sweep.owners import (
    SLURM_ENDED,
    JobOwner,
    run_quietly,
    slurm_cluster_name,
    slurm_task_states,
)

STORAGE_ENV = "STUDYLIB_STORAGE"  # the real storage URL, in the job's environment only
TRACKING_ENV = "STUDYLIB_TRACKING_URI"
INSTALL = "pip install 'studylib[slurm]'"
CONTROLLER_SILENCE_SECONDS = 600.0  # a Slurm controller restarting answers again within this


def slurm_worker(spec: WorkerSpec, max_requeues: int) -> dict:
    """The body of one array task (submitit calls it on the node)."""
    secrets = None
    if STORAGE_ENV in os.environ:
        secrets = Secrets(os.environ[STORAGE_ENV], os.environ[TRACKING_ENV])
    report = run_worker(spec, secrets, also_stop_on=(signal.SIGUSR2,))
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if report["stopped_by"] == "SIGUSR2" and restarts < max_requeues:
        # The time limit is near, or the task is being preempted: its trial is closed and
        # queued again; the task goes back to the queue and carries on from the study.
        task = this_task()
        done = run_quietly(["scontrol", "requeue", task]) if task else None
        report["requeued"] = done is not None and done.returncode == 0
    return report


def this_task() -> str | None:
    """ "12_3" in task 3 of array job 12, "12" in a job that is no array, None outside Slurm."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmEngine:
    def __init__(self, config: SlurmConfig, jobs: int, job_name: str):
        try:
            import submitit  # optional dependency: the slurm extra
        except ImportError:
            raise ConfigError(f"--launcher slurm needs submitit: {INSTALL}") from None
        self.submitit = submitit
        self.config = config
        self.jobs = jobs
        self.job_name = job_name
        self.folder = Path(config.logs).resolve()

    def check_commands(self) -> None:
        missing = [c for c in ("sbatch", "squeue", "scancel", "srun") if shutil.which(c) is None]
        if missing:
            raise ConfigError(
                f"--launcher slurm: {', '.join(missing)} not found on PATH (Slurm's client "
                "commands): run on a machine of the cluster, or use --launcher local or ray"
            )

    def executor(self, folder: Path) -> Any:
        config = self.config
        executor = self.submitit.SlurmExecutor(folder=folder / "%j")
        parameters: dict[str, Any] = {
            "job_name": self.job_name,
            "time": config.time,
            "cpus_per_task": config.cpus_per_task,
            "signal_delay_s": config.signal_delay,
            "array_parallelism": self.jobs,
            "setup": list(config.setup),
            "additional_parameters": dict(config.sbatch),
        }
        if config.partition:
            parameters["partition"] = config.partition
        if config.gpus_per_task:
            parameters["gpus_per_task"] = config.gpus_per_task
        if config.mem_gb:
            gb = config.mem_gb
            parameters["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
        try:
            executor.update_parameters(**parameters)
        except ValueError as exc:  # an sbatch option submitit cannot write
            raise ConfigError(f"[launcher.slurm]: {exc}") from None
        return executor

    def specs(self, spec: WorkerSpec) -> list[WorkerSpec]:
        return [replace(spec, threads=self.config.cpus_per_task)] * self.jobs

    def submit(self, spec: WorkerSpec, secrets: Secrets | None) -> SlurmFleet:
        self.check_commands()
        cluster = slurm_cluster_name() or ""
        executor = self.executor(self.folder)
        channel = (
            {}
            if secrets is None
            else {STORAGE_ENV: secrets.storage, TRACKING_ENV: secrets.tracking_uri}
        )
        with environment(channel):  # sbatch passes its environment to the job
            jobs = executor.map_array(
                slurm_worker, self.specs(spec), [self.config.max_requeues] * self.jobs
            )
        return SlurmFleet(jobs, cluster, self.folder)

    def dry_run(self, spec: WorkerSpec) -> str:
        """The sbatch script a submission would write, submitting nothing: submitit runs a
        stand-in `sbatch` that keeps the script (submitit's own tests mock sbatch so)."""
        with tempfile.TemporaryDirectory(prefix="studylib-dry-run-") as tmp:
            bin_dir, kept = Path(tmp, "bin"), Path(tmp, "script.sh")
            bin_dir.mkdir()
            fake = f'#!/bin/sh\ncp "$1" {shlex.quote(str(kept))}\necho "Submitted batch job 1"\n'
            for command in ("sbatch", "srun"):
                (bin_dir / command).write_text(fake)
                (bin_dir / command).chmod(0o755)
            folder = Path(tmp, "logs")
            path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
            with environment({"PATH": path}):
                self.executor(folder).map_array(
                    slurm_worker, self.specs(spec), [self.config.max_requeues] * self.jobs
                )
            script = kept.read_text().replace(str(folder), str(self.folder))
        return redact(script)


class SlurmFleet:
    """The array job's tasks, as `squeue` and their result files tell."""

    def __init__(self, jobs: list[Any], cluster: str, folder: Path):
        self.jobs = {job.job_id: job for job in jobs}  # "12_0" -> submitit job
        self.job_id = jobs[0].job_id.split("_")[0]
        self.folder = folder
        where = cluster or "(unnamed)"
        self.describe = f"Slurm job {self.job_id} ({len(jobs)} tasks) on cluster {where}"
        # Always the job, even on a cluster without a name: a parent that no engine can judge
        # stays open rather than being closed as the submitting process's when it exits.
        self.owner = JobOwner("slurm", self.job_id, cluster)
        self.ended: set[str] = set()
        self.unanswered = 0

    def poll(self) -> FleetState:
        states = slurm_task_states(self.job_id)
        if states is None:  # the controller did not answer: count every task still alive
            self.unanswered += 1
            if self.unanswered * POLL_SECONDS > CONTROLLER_SILENCE_SECONDS:
                raise RuntimeError(
                    f"squeue has not answered for {CONTROLLER_SILENCE_SECONDS:.0f} s; "
                    f"{self.describe} may still run: squeue -j {self.job_id}"
                )
            alive = len(self.jobs) - len(self.ended)
            said = [] if self.unanswered not in (1, 10, 100) else ["squeue did not answer"]
            return FleetState(alive, said)
        self.unanswered = 0
        state = FleetState(alive=0)
        for task, job in self.jobs.items():
            slurm_state = states.get(task)
            if slurm_state is not None and slurm_state not in SLURM_ENDED:
                state.alive += 1
                continue
            if task in self.ended:
                continue
            self.ended.add(task)
            how, text = task_outcome(job)
            if how == "error":
                state.crashed = f"task {task}: {last_line(text)} (log: {job.paths.stderr})"
            state.notes.append(f"task {task} {describe_ending(how, text, slurm_state)}")
        return state

    def stop_pending(self) -> None:
        run_quietly(["scancel", "--state=PENDING", self.job_id])

    def cancel(self) -> None:
        run_quietly(["scancel", self.job_id])

    def watch_hint(self) -> list[str]:
        return [
            f"{self.describe}",
            f"squeue -j {self.job_id}",
            f"logs: {self.folder}/{self.job_id}_*/",
            "scancel " + self.job_id + " stops it (each task closes its trial)",
        ]

    def close(self) -> None:
        # Nothing to release: submitit keeps no connection, and the job outlives this
        # command by design (scancel ends it); Ray's fleet disconnects here instead.
        return None


def task_outcome(job: Any) -> tuple[str, Any]:
    """("success", the worker's report), ("error", traceback text) or ("none", None) for a task
    that ended without a result (cancelled, killed, out of memory, its node lost)."""
    path = Path(job.paths.result_pickle)
    if not path.exists():
        return "none", None
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError):
        return "none", None


def describe_ending(how: str, text: Any, slurm_state: str | None) -> str:
    if how == "success":
        stopped = text.get("stopped_by") if isinstance(text, dict) else None
        ran = text.get("ran", 0) if isinstance(text, dict) else 0
        if stopped:
            again = " and requeued itself" if text.get("requeued") else ""
            return f"stopped by {stopped} after {ran} trials: its trial runs again{again}"
        return f"ended after {ran} trials"
    if how == "error":
        return f"failed: {last_line(text)}"
    return f"ended without a result ({slurm_state or 'gone'}): its trial, if any, runs again"


def last_line(text: Any) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return redact(lines[-1].strip() if lines else "no message")[:300]
