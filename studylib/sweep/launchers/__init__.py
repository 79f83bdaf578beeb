"""Launchers: `studylib sweep --launcher slurm|ray --jobs N` starts N workers on an engine
researchers already run, against the study's shared storage; `--launcher local` is `--workers`.

common.py the worker's body, the guard rails and the launching command's watch over the study;
slurm.py a Slurm job array through submitit; ray.py Ray tasks (and a detached actor for
`--detach`). Which engine owns a launched sweep's parent run, and whether it still lives, is
sweep/owners.py.
"""

from __future__ import annotations

from studylib.config import Experiment, Settings
from studylib.sweep.ablation import ablation_steps
from studylib.sweep.launchers.common import (
    Engine,
    Launch,
    LaunchOutcome,
    Part,
    WorkerSpec,
    absolute,
    check_folder_shared,
    check_reachable,
    launch_ablation,
    launch_sweep,
    masked,
)

__all__ = [
    "Launch",
    "LaunchOutcome",
    "check_launch",
    "dry_run",
    "launch_ablation",
    "launch_sweep",
    "make_engine",
]


def make_engine(launch: Launch, exp: Experiment) -> Engine:
    """The engine of a non-local launch; a missing library or command is one ConfigError."""
    name = f"studylib-{exp.name}"
    if launch.kind == "slurm":
        from studylib.sweep.launchers.slurm import SlurmEngine  # optional: submitit

        engine = SlurmEngine(launch.config.slurm, launch.jobs, name)
        if not launch.dry_run:
            check_folder_shared(engine.folder, "[launcher.slurm] logs", launch)
            engine.check_commands()
        return engine
    if launch.kind == "ray":
        from studylib.sweep.launchers.ray import RayEngine  # optional: ray

        ray_engine = RayEngine(launch.config.ray, launch.jobs, name, detach=launch.detach)
        if not launch.dry_run:
            ray_engine.check()
        return ray_engine
    raise ValueError(f"no engine for --launcher {launch.kind}")


def check_launch(exp: Experiment, settings: Settings, launch: Launch) -> None:
    """Bad launcher settings as one ConfigError line, before anything is written."""
    if launch.kind == "local":
        return
    check_reachable(settings, launch)


def dry_run(
    exp: Experiment,
    settings: Settings,
    launch: Launch,
    engine: Engine,
    trials: int | None,
    population: int,
    part: Part = "sweep",
) -> str:
    """What would be submitted, with passwords masked; nothing is written or submitted."""
    ablation = part == "ablation"
    spec = WorkerSpec(
        exp=exp,
        settings=masked(absolute(settings)),
        total=len(ablation_steps(exp))
        if ablation
        else (trials if trials is not None else exp.sweep.trials),
        parent_id=f"(the {part}'s parent run, created at submission)",
        population=1 if ablation else population,
        threads=1,
        done_at_start=0,
        part=part,
    )
    return engine.dry_run(spec)
