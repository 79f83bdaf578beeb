"""Who owns a launched sweep: a Slurm job or a Ray job, judged by asking that engine.

A sweep's parent MLflow run records its owner (`names.OWNER_ATTR`). Run by hand or with
`--workers`, that is a process (recovery.Worker), gone when the process is gone. A sweep
launched on an engine (`--launcher slurm|ray`, launchers/) outlives the command that submitted
it, above all with `--detach`: its parent belongs to the job, and only the engine can say
whether the job still lives. Dead-owner recovery (recovery.close_dead_sweeps) closes such a
parent only when the engine answers "gone"; when it cannot be asked (no `squeue` here, another
cluster, Ray unreachable) the run is left open: a wrong "gone" would close the record of a
sweep that is still running.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any, Literal

State = Literal["alive", "gone", "unknown"]
ASK_SECONDS = 60.0  # an engine that does not answer within this is "unknown", never "gone"
# Slurm job states of a job that may still run (squeue --states=all prints ended ones too).
SLURM_ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
}


@dataclass(frozen=True)
class JobOwner:
    engine: Literal["slurm", "ray"]
    job: str  # slurm: the array job id; ray: the name of the detached actor that drives it
    where: str  # slurm: the cluster's name; ray: the address to reach the cluster at
    namespace: str = ""  # ray: the actor's namespace

    @classmethod
    def from_attr(cls, value: Any) -> JobOwner | None:
        try:
            engine = value["engine"]
            if engine not in ("slurm", "ray"):
                return None
            return cls(engine, str(value["job"]), str(value["where"]), str(value.get("ns", "")))
        except (TypeError, KeyError):
            return None

    def as_attr(self) -> dict[str, str]:
        attr = asdict(self)
        attr["ns"] = attr.pop("namespace")
        return attr

    def describe(self) -> str:
        if self.engine == "slurm":
            return f"Slurm job {self.job} on cluster {self.where}"
        return f"Ray job {self.job} at {self.where}"

    def state(self) -> State:
        return slurm_job_state(self) if self.engine == "slurm" else ray_job_state(self)


def run_quietly(
    argv: list[str], timeout: float = ASK_SECONDS
) -> subprocess.CompletedProcess | None:
    """`argv`'s result, or None where it cannot be run here or does not answer in time."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_cluster_name() -> str | None:
    done = run_quietly(["scontrol", "show", "config"])
    if done is None or done.returncode != 0:
        return None
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip()
    return None


def slurm_task_states(job: str) -> dict[str, str] | None:
    """Array task id ("12_3") -> Slurm state of each task of job `job` the controller still
    holds; {} when it holds none (ended and purged); None when it cannot be asked."""
    done = run_quietly(["squeue", "-h", "-r", "--states=all", "-j", job, "-o", "%i %T"])
    if done is None:
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        if task:
            states[task] = state.strip()
    return states


def slurm_job_state(owner: JobOwner) -> State:
    if slurm_cluster_name() != owner.where:
        return "unknown"  # another cluster, or none here: its job ids mean nothing here
    states = slurm_task_states(owner.job)
    if states is None:
        return "unknown"
    return "alive" if any(s not in SLURM_ENDED for s in states.values()) else "gone"


def ray_job_state(owner: JobOwner) -> State:
    """Ask the cluster in a process of its own: connecting this one to a Ray cluster would
    tie it to that cluster for its whole life (and a worker may already be tied to another)."""
    done = run_quietly(
        [
            sys.executable,
            "-m",
            "studylib.sweep.launchers.ray",
            "probe",
            owner.where,
            owner.namespace,
            owner.job,
        ],
    )
    if done is None or done.returncode != 0:
        return "unknown"
    answer = done.stdout.strip().splitlines()[-1:] or [""]
    return answer[0] if answer[0] in ("alive", "gone") else "unknown"  # type: ignore[return-value]
