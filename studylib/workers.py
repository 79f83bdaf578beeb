"""Parallel workers: `studylib sweep --workers N` runs N processes against one study.

The main process (`sweep.run_sweep`) opens the study, enqueues the baseline and creates the
sweep's parent MLflow run; here it starts N - 1 worker processes and is the N-th worker itself
(it has everything loaded already, so it trains while the others start). Every worker opens
the same Optuna storage (the journal file takes a lock per write, so processes on one machine
share it safely) and the same MLflow store, and repeats: claim one of the trials still to run
from a shared counter, ask Optuna for it, train it, log it as a child run of the parent. The
counter makes the total exact: N workers never overshoot the requested number of trials,
however they interleave.

Threads: small models gain nothing from many threads, and N workers each using every core
oversubscribe the machine (measured on 2 cores: two processes of two threads each ran 10 to
65 times slower than one), so each worker gets cores // N torch threads.

A crashed trial stops the sweep as it does without workers: its worker exits with the error,
the others finish the trial they are on and take no new one, and the sweep fails.
Reproducibility: with one worker the sampler is seeded; with several, which worker gets which
trial depends on timing, so a parallel sweep explores differently on every run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import optuna
import torch

from studylib.config import ConfigError, Experiment, Settings

POLL_SECONDS = 0.5  # how often the main process refreshes the progress bar
STOP_GRACE_SECONDS = 60.0  # how long a stopping worker may take to close its trial


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of `workers` processes so that workers x threads <= cores."""
    return max(1, (cores or machine_cores()) // workers)


def check_workers(workers: int, storage: str) -> None:
    """Bad worker settings as one `ConfigError` line, before anything runs."""
    cores = machine_cores()
    if workers > cores:
        raise ConfigError(
            f"--workers = {workers}: this machine gives the process {cores} cores; "
            f"allowed 1..{cores} (more workers than cores only slows every trial down)"
        )
    if storage.startswith("sqlite:"):
        raise ConfigError(
            f"--storage = {storage}: SQLite locks under parallel Optuna workers; use a journal "
            "file (the default, e.g. --storage optuna.journal) or a PostgreSQL URL"
        )


def run_workers(
    exp: Experiment,
    settings: Settings,
    study: optuna.Study,
    total: int,
    parent_id: str,
    progress,  # sweep.Progress of the main process
    workers: int,
    objective: Callable[[optuna.Trial], float],  # the main process's own, as a worker
) -> None:
    """Run trials in `workers` processes (this one included) until `study` holds `total`."""
    from studylib.sweep import counted_trials

    remaining = total - counted_trials(study)
    if remaining <= 0:
        return
    context = worker_context()
    slots = context.Value("i", remaining)
    stop = context.Event()
    threads = threads_per_worker(workers)
    processes = [
        context.Process(
            target=work,
            args=(exp, settings, parent_id, slots, stop, index, threads),
            name=f"studylib-worker-{index}",
        )
        for index in range(1, min(workers, remaining))
    ]
    # Starting the first process waits for the fork server to import studylib (seconds):
    # let a thread wait for it while this process trains.
    starter = threading.Thread(target=lambda: [p.start() for p in processes], daemon=True)
    starter.start()
    study.sampler = worker_sampler(exp, study, 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        while not stop.is_set() and claim(slots):
            study.optimize(objective, n_trials=1)
            _show(study, progress)
        starter.join()
        while any(process.is_alive() for process in processes):
            _show(study, progress)
            time.sleep(POLL_SECONDS)
    except BaseException:  # a crash here, or Ctrl-C (which reaches the workers too)
        stop.set()  # the others close the trial they are on and take no new one
        starter.join()
        for process in processes:
            process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.terminate()
        raise
    finally:
        torch.set_num_threads(before)
        _show(study, progress)
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(processes) + 1} workers failed (exit codes "
            f"{[p.exitcode for p in failed]}); their tracebacks are printed above"
        )


def worker_sampler(exp: Experiment, study: optuna.Study, index: int) -> optuna.samplers.BaseSampler:
    """TPE for worker `index`: its own seed, so that workers never draw the same random
    proposals, and constant_liar, which keeps TPE from sending two workers to the same region
    while their trials are still running."""
    seed = exp.seed + len(study.trials) + 1_000_003 * index
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def worker_context() -> multiprocessing.context.BaseContext:
    """Fresh processes: no threads, locks or database handles inherited from this one.

    A fork server that has imported studylib (torch, MLflow, Optuna) once forks each worker
    ready to run: measured on 2 busy cores, 3 s until two workers run instead of 9.5 s when
    each imports everything itself ("spawn", the fallback where there is no fork server).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first optimizer a process builds imports it (2-4 s here).
    context.set_forkserver_preload(["torch._dynamo", "studylib.sweep", "studylib.workers"])
    return context


def _show(study: optuna.Study, progress) -> None:
    """Bring the main process's progress bar up to what the storage holds."""
    from studylib.sweep import counted_trials

    done = min(counted_trials(study), progress.bar.total)
    progress.bar.update(max(0, done - progress.bar.n))
    if study.best_trials:
        progress.best = min(progress.best, study.best_value)
        progress.bar.set_postfix_str(f"best val/loss {progress.best:.4f}")


def work(
    exp: Experiment,
    settings: Settings,
    parent_id: str,
    slots: Synchronized,
    stop: Event,
    index: int,
    threads: int,
) -> None:
    """One worker process: claim a trial, run it, repeat while trials remain."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # refused once inter-op work has started
        torch.set_num_interop_threads(1)
    from studylib.data import load_splits
    from studylib.sweep import Progress, open_study, trial_objective
    from studylib.tracking import Tracker
    from studylib.train import resolve_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = load_splits(exp.data, exp.seed, settings.cache_dir).to(resolve_device(settings.device))
    study = open_study(exp, settings)
    study.sampler = worker_sampler(exp, study, index)
    tracker = Tracker(settings.tracking_uri, exp.name, settings.artifact_root)
    objective = trial_objective(
        exp, settings, splits, tracker, parent_id, Progress(0, 0, enabled=False)
    )
    try:
        while not stop.is_set() and claim(slots):
            study.optimize(objective, n_trials=1)
    except BaseException:
        stop.set()  # the others finish their current trial and take no new one
        raise


def claim(slots: Synchronized) -> bool:
    """Take one of the trials still to run; False when none is left."""
    with slots.get_lock():
        if slots.value <= 0:
            return False
        slots.value -= 1
        return True
