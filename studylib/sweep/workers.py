"""Parallel workers: `studylib sweep --workers N` runs N processes against one study.

The main process (run.py) opens the study, enqueues the baseline and creates the sweep's parent
MLflow run; here it starts N - 1 worker processes and is the N-th worker itself (it has
everything loaded already, so it trains while the others start). Every worker opens the study
exactly as the main process does (`loops.open_share`: the experiment's pruner and sampler seed
rule) and runs the same `loops.trial_loop`, one trial or a population of P at a time: trials
are claimed through the one protocol (claim.py), so N workers end the study at exactly the
requested total however they interleave, and trials of a worker that died are failed and
queued again. Every trial is a child run of the one parent run.

Threads: small models gain nothing from many threads, and N workers each using every core
oversubscribe the machine (measured on 2 cores: two processes of two threads each ran 10 to
65 times slower than one), so each worker gets cores // N torch threads.

A crashed trial stops the sweep as it does without workers: its worker exits with the error,
the others finish the trial they are on and take no new one, and the sweep fails. A worker that
is killed (`kill -9`, the OOM killer) stops nothing: its trial is failed and queued again by
the others (claim.watch), and the sweep ends as it would have, naming the lost worker.
Reproducibility: the sampler is seeded by trial number (`study.sampler_for`), so TPE's random
start-up trials get the same parameters in any mode; after it, a trial's parameters depend on
which trials had finished when it was asked, which with several workers depends on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import optuna
import torch

from studylib.config import Experiment, Settings
from studylib.console import Progress, say
from studylib.errors import ConfigError, Incomplete, checkpoint, stop_on_signals
from studylib.locations import Location
from studylib.sweep.loops import Opener, Share, open_share, trial_loop
from studylib.sweep.study import counted_trials
from studylib.sweep.writer import process_context

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


def check_workers(workers: int, storage: Location) -> None:
    """Bad worker settings as one `ConfigError` line, before anything runs."""
    cores = machine_cores()
    if workers > cores:
        raise ConfigError(
            f"--workers = {workers}: this machine gives the process {cores} cores; "
            f"allowed 1..{cores} (more workers than cores only slows every trial down)"
        )
    if storage.kind == "sqlite":
        raise ConfigError(
            f"--storage = {storage.redacted}: SQLite locks under parallel Optuna workers; use a "
            "journal file (the default, e.g. --storage optuna.journal) or a PostgreSQL URL"
        )


def run_workers(
    share: Share, workers: int, population: int = 1, opener: Opener = open_share
) -> None:
    """Run trials in `workers` processes (this one included) until `study` holds `total`;
    with `population` > 1 each process trains that many trials at once (loops.run_population).
    `opener`: how each worker opens its share, as `share` was opened (a sweep's study, or an
    ablation's units: ablation.open_ablation_share)."""
    exp, settings, study, total, progress = (
        share.exp,
        share.settings,
        share.study,
        share.total,
        share.progress,
    )
    remaining = total - counted_trials(study)
    if remaining <= 0:
        return
    context = process_context()
    ran = context.Value("i", 0)
    stop = context.Event()
    threads = threads_per_worker(workers)
    processes = [
        context.Process(
            target=work,
            args=(
                exp,
                settings,
                total,
                share.parent_id,
                ran,
                stop,
                threads,
                population,
                opener,
            ),
            name=f"studylib-worker-{index}",
        )
        for index in range(1, min(workers, remaining))
    ]
    # Starting the first process waits for the fork server to import studylib (seconds):
    # let a thread wait for it while this process trains.
    starter = threading.Thread(target=lambda: [p.start() for p in processes], daemon=True)
    starter.start()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Returns once the study is complete (or what is left runs on machines it cannot judge).
        trial_loop(share, population, should_stop=stop.is_set)
        # Nothing is left to claim: a worker still starting up exits before it opens the
        # storage, loads the data or makes a CUDA context (seconds, on a GPU machine), and the
        # others take no new trial once their current one is closed.
        stop.set()
        starter.join()
        while any(process.is_alive() for process in processes):
            progress.sync(min(counted_trials(study), total))
            time.sleep(POLL_SECONDS)
            checkpoint()  # Ctrl-C while the others finish: stop them too
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
        share.tally.ran += ran.value
        progress.sync(min(counted_trials(study), total))
    failed = [p for p in processes if p.exitcode != 0]
    if not failed:
        return
    ended = "; ".join(f"{p.name} (pid {p.pid}) {how_it_ended(p.exitcode)}" for p in failed)
    done = counted_trials(study)
    if done >= total:  # the others ran the lost worker's trials again: nothing is missing
        say(
            f"{ended}; its trials were failed and run again by the other workers: the study "
            f"holds all {total} trials"
        )
        return
    raise Incomplete(
        f"{len(failed)} of {len(processes) + 1} workers ended early ({ended}); the study holds "
        f"{done} of {total} trials: sweep again to finish it"
    )


def how_it_ended(exitcode: int | None) -> str:
    """A worker process's end, as it happened: killed by a signal, or which exit and why."""
    if exitcode is None:
        return "did not stop"
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    if exitcode == 1:
        return "exited 1 (its traceback is printed above)"
    return f"exited {exitcode}"


def work(
    exp: Experiment,
    settings: Settings,
    total: int,
    parent_id: str,
    ran: Synchronized,
    stop: Event,
    threads: int,
    population: int = 1,
    opener: Opener = open_share,
) -> None:
    """One worker process: the sweep's trial loop under the main process's parent run."""
    if stop.is_set():  # started after the study was fully claimed (or a worker failed)
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # refused once inter-op work has started
        torch.set_num_interop_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with stop_on_signals(at_safe_points=True):
        share = None
        try:
            share = opener(
                exp, settings, total, Progress(total, 0, enabled=False), parent_id=parent_id
            )
            trial_loop(share, population, should_stop=stop.is_set)
        except BaseException:
            stop.set()  # the others finish their current trial and take no new one
            raise
        finally:
            if share is not None:
                with ran.get_lock():
                    ran.value += share.tally.ran
