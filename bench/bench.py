"""`make bench`: how fast studylib runs trials, against the floor and against the tutorial sweep.

    python -m bench.bench [--quick] [--device auto|cpu|cuda] [--families mlp,cnn] ...

One process, one machine, one seed; for each model family present (FAMILIES below) the same
model, data (MNIST-1D, the default study's 1,000 training examples, batch 100, Adam), epochs
and regularizers (dropout 0.1, L2 1e-4) go through:

- floor: a bare hand-written loop: tensors on the device, batches as index slices of a
  randperm, the same model, the same fused optimizer kernel and the same fused L2 gradient,
  and after each epoch the same evaluation studylib does (eval-mode loss and accuracy over
  the whole train and validation splits, read back once). Nothing else: no penalty value or
  objective metric, no early-stopping state, no weight statistics, no logging, no test score.
  Its validation curve must match studylib's (the table shows the largest difference): the
  two do the same arithmetic, so the ratio is what studylib adds around it.
- studylib trial: `sweep.run_trial` end to end: model build, MLflow run (SQLite) with params
  and tags, training, evaluation, weight statistics, early-stopping bookkeeping (patience
  longer than the run, so every epoch trains), the batched curve, test score, artifacts.
- tutorial trial: what the PyTorch, Optuna and MLflow tutorials lead a user to write:
  a DataLoader over a TensorDataset, the penalty as a Python sum, `.item()` per batch,
  evaluation through DataLoaders, one `mlflow.log_metric` call per value (the same ten
  values per epoch studylib records), the state dict saved as an artifact.
- whole sweeps of N trials over dropout, L1 and L2 (no pruning, no early stopping: every
  trial trains every epoch on both sides): the tutorial sweep (Optuna's in-memory study,
  one trial at a time, MLflow child runs through optuna-integration's MLflowCallback with
  `track_in_mlflow`, or an equivalent hand-written nested run when that package is missing:
  the JSON says which) against `studylib sweep` at 1..cores workers, and against population
  training. Trials per minute, and studylib's overhead per trial outside `fit` (Optuna
  storage, MLflow run creation and closing, artifacts), with the per-invocation setup apart,
  split into a fixed cost per trial (the same sweep at one epoch a trial) and a cost per
  epoch (the curve's values that the closing batch writes).
- report at scale: synthetic trial runs (100 epochs of the ten curves each) logged to a SQLite
  MLflow through log_batch, then the time `write_report` takes, and `load_curves` over all.
- no leaks: resident memory after 20 and after 200 trials of a sweep in this process.

It prints a table of medians over repeats and writes JSON to $OUT/bench.json when OUT is set,
else to bench/out/bench.json. Timings depend on what else the machine runs: the JSON keeps the
load average before and after. Every in-process measure (floor, trial, tutorial, one-worker
and population sweeps) uses `--threads` torch threads, 1 by default (small models gain little
from more, and on 2 busy cores two threads ran the same trial 2-10x slower); parallel workers
take cores // workers each, as `studylib sweep --workers` does. MLflow's telemetry is switched
off here (its network calls depend on the network, not on the code measured).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from pydantic import ValidationError
from torch.utils.data import DataLoader, TensorDataset

from studylib.config import Experiment, Settings, Speed
from studylib.data import Splits, load_splits
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.names import ROLE_TAG, STATUS_TAG, STUDY_TAG, TRIAL_TAG
from studylib.sweep import make_storage, run_sweep
from studylib.sweep.loops import open_records
from studylib.sweep.space import distributions, suggest
from studylib.sweep.study import sampler_for
from studylib.sweep.trial import run_trial
from studylib.sweep.workers import machine_cores, threads_per_worker
from studylib.sweep.writer import Message, Piece, Writer
from studylib.tracking import Recorder, Tracker
from studylib.tracking.store import FLUSH_SECONDS
from studylib.train import resolve_device
from studylib.train.loop import EVAL_BATCH, TrainResult, final_metrics, make_optimizer
from studylib.train.regularizers import decay_parameters

# One line per family: the model config the benchmark trains. A family not registered yet
# (its `arch` unknown to the config) is skipped and listed as absent.
FAMILIES: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp", "hidden": [256, 256]},
    "cnn": {"arch": "cnn"},
    "rnn": {"arch": "rnn"},
    "transformer": {"arch": "transformer"},
}

BENCH_EXPERIMENT: dict[str, Any] = {
    "name": "bench",
    "seed": 0,
    "data": {"train_examples": 1000},  # the default study's training set
    "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "l2": 1e-4},
    "sweep": {
        "baseline": False,
        "pruner": {"enabled": False},
        "search": {
            "dropout": {"low": 0.0, "high": 0.5},
            "l1": {"low": 1e-6, "high": 1e-3, "log": True, "allow_zero": True},
            "l2": {"low": 1e-6, "high": 1e-2, "log": True, "allow_zero": True},
        },
    },
}

REPO = Path(__file__).resolve().parents[1]
BENCH_DROPOUT = 0.1  # for every family whose config has a dropout rate

# Trial length. A trial of the default study (`make sweep`, experiments/default.toml) trains a
# median of 60 epochs (30 trials on 2026-11-26: 20 completed at 24-200 epochs, 10 pruned at
# 40-161), so the full benchmark's trials train 50: a typical trial, rounded down. studylib's
# per-trial fixed cost (the MLflow run's creation, params, closing batch, artifacts: about
# 20 ms on SQLite) weighs more on shorter trials, which --quick (20 epochs) and the table show.
TRIAL_EPOCHS = 50
QUICK_EPOCHS = 20

# Each target: (comparison, value, label). A figure is the median of its repeats, printed with
# their min and max; "met" judges the median.
TARGETS = {
    "trial_over_floor_10": ("<=", 1.10, "studylib / floor, 10-epoch trial (steady state)"),
    "trial_over_floor_50": ("<=", 1.05, "studylib / floor, 50-epoch trial (steady state)"),
    "on_path_ms": ("<", 5.0, "bookkeeping on the training path a trial (ms)"),
    "sweep_over_limit": ("<=", 1.15, "sweep steady state / cores' limit (best workers)"),
    "tutorial_over_studylib_sweep_cpu": (">=", 2.5, "tutorial (own process) / studylib, whole"),
    "tutorial_over_studylib_sweep_gpu": (">=", 5.0, "tutorial / studylib, whole sweep (GPU)"),
    "moonshot_cpu_seconds": ("<", 60.0, "moonshot CPU lower bound: 1,000 no-op trials (s)"),
    "moonshot_gpu_seconds": ("<", 120.0, "moonshot: 1,000 trials end to end on the GPU (s)"),
    "report_seconds": ("<", 30.0, "report for 1,000 runs x 100 epochs (s)"),
    "leak_ratio": ("<=", 1.10, "memory after 200 trials / after 20"),
    "population_over_sequential_gpu": (">=", 5.0, "population / sequential trials per min (GPU)"),
}

CURVE_KEYS = (
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "gap/loss",
    "gap/acc",
    "train/objective",
    "weights/l2_norm",
    "weights/sparsity",
    "lr",
)


# ---------------------------------------------------------------------------------------------
# Configs


def family_experiment(model: dict[str, Any], epochs: int) -> Experiment | None:
    """The benchmark's experiment for one family, or None when the family is not present."""
    raw = json.loads(json.dumps(BENCH_EXPERIMENT))
    raw["model"] = dict(model)
    raw["train"].update(max_epochs=epochs, patience=epochs + 1)  # bookkeeping, never a stop
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as exc:
        if any(_is_unknown_arch(error) for error in exc.errors()):
            return None
        raise  # a present family with a bad line in FAMILIES: say so, do not skip it
    if "dropout" in type(exp.model).model_fields:
        exp = exp.with_values({"model.dropout": BENCH_DROPOUT})
    return exp


def _is_unknown_arch(error: dict) -> bool:
    # A plain model config rejects the arch literal; a union of them rejects the tag.
    return error["type"] == "union_tag_invalid" or (
        error["type"] == "literal_error" and error["loc"][-1] == "arch"
    )


# ---------------------------------------------------------------------------------------------
# The floor: a bare loop doing the arithmetic studylib does


def floor_trial(exp: Experiment, splits: Splits) -> tuple[float, float, list[float]]:
    """Wall and CPU seconds of a bare training loop with studylib's per-epoch evaluation;
    its validation curve."""
    cfg = exp.train
    device = splits.x_train.device
    started, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, splits.input_shape, splits.num_classes).to(device)
    optimizer = make_optimizer(cfg, list(model.parameters()))  # the same fused kernel
    weights = decay_parameters(model)
    order = torch.Generator(device=device).manual_seed(exp.seed)
    x, y, n = splits.x_train, splits.y_train, len(splits.y_train)
    curve = []
    for _ in range(cfg.max_epochs):
        model.train()
        perm = torch.randperm(n, device=device, generator=order)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # the L2 penalty's gradient, as studylib adds it
                torch._foreach_add_([w.grad for w in weights], weights, alpha=2 * cfg.l2)
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            figures = []
            for xs, ys in ((x, y), (splits.x_val, splits.y_val)):
                logits = torch.cat(
                    [model(xs[i : i + EVAL_BATCH]) for i in range(0, len(ys), EVAL_BATCH)]
                )
                figures += [F.cross_entropy(logits, ys), (logits.argmax(1) == ys).float().mean()]
            curve.append(torch.stack(figures).tolist()[2])
    _sync(device)
    return time.perf_counter() - started, time.process_time() - cpu, curve


# ---------------------------------------------------------------------------------------------
# studylib


def studylib_trial(
    exp: Experiment, splits: Splits, tracker: Tracker, speed: Speed, writer: Writer | None = None
) -> tuple[float, float, float, list[float]]:
    """Wall and CPU seconds of a trial as a sweep runs it: `run_trial` with its run recorded
    and handed to `writer` (None: written at once, on the path); the seconds of its `fit`
    (the run's own `train_seconds`); its validation curve."""
    started, cpu = time.perf_counter(), time.process_time()
    recorder = None
    if writer is not None:
        recorder = Recorder(lambda record: writer.submit(Message([Piece(record)])), FLUSH_SECONDS)
    outcome = run_trial(
        exp,
        splits,
        recorder or tracker,
        run_name="bench-trial",
        tags={ROLE_TAG: "bench"},
        speed=speed,
    )
    if writer is not None and recorder is not None:
        writer.submit(Message([Piece(recorder.started[-1].final)]))
    _sync(splits.x_train.device)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    fit_seconds = outcome.result.seconds
    return seconds, cpu, fit_seconds, [m["val/loss"] for m in outcome.result.history]


def trial_writers(exp: Experiment, folder: Path, cache_dir: Path, device) -> dict[str, Writer]:
    """A process writer and a thread writer, each over a study of its own (a writer opens its
    study as a sweep's does), to measure trials as a sweep runs them."""
    writers = {}
    for mode in ("process", "thread"):
        label = f"trial-writer-{mode}-{time.monotonic_ns()}"
        named = exp.with_values({"name": label})
        settings = _settings(folder, label, cache_dir, device)
        open_records(named, settings)
        writers[mode] = Writer(named, settings, mode)
    return writers


def studylib_sweep(
    exp: Experiment,
    settings: Settings,
    trials: int,
    workers: int = 1,
    population: int = 1,
    threads: int = 0,
) -> dict[str, float]:
    """One `studylib sweep` invocation of `trials` new trials; time in `fit` measured apart.

    The stores exist beforehand (a study's database is created once, not per sweep).
    `threads`: torch threads of an in-process sweep (0: the cores, as the CLI has it); the
    worker processes of a parallel sweep set their own (cores // workers).
    """
    Tracker(settings.tracking_uri, exp.name, settings.artifact_root)  # create the database
    before = torch.get_num_threads()
    torch.set_num_threads(threads or machine_cores())
    try:
        started = time.perf_counter()
        summary = run_sweep(exp, settings, trials=trials, workers=workers, population=population)
        seconds = time.perf_counter() - started
        # The same invocation once more has nothing left to run: its time is the fixed cost.
        started = time.perf_counter()
        run_sweep(exp, settings, trials=trials, workers=1)
        setup = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    assert summary.trials_run == trials, summary
    out = {
        "trials": trials,
        "seconds": seconds,
        "setup_seconds": setup,
        "trials_per_minute": 60 * trials / seconds,
    }
    out.update(child_timing(settings.tracking_uri, exp.name, summary.parent_run_id))
    if workers == 1 and population == 1:  # fit ran in this process: overhead is measurable
        fit_seconds = out.pop("train_seconds")
        out["fit_seconds"] = fit_seconds
        out["overhead_ms"] = 1000 * (seconds - setup - fit_seconds) / trials
    return out


def child_timing(uri: str, name: str, parent_id: str) -> dict[str, float]:
    """When the first trial of a sweep started (after its parent run) and how long trials
    took, from the runs' own start and end times."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    parent = client.get_run(parent_id)
    starts = [run.info.start_time for run in children]
    return {
        "first_trial_after_seconds": (min(starts) - parent.info.start_time) / 1000,
        "mean_trial_seconds": statistics.mean(
            (run.info.end_time - run.info.start_time) / 1000 for run in children
        ),
        # Each trial's `fit`, as the run recorded it (populations record none).
        "train_seconds": sum(run.data.metrics.get("train_seconds", 0.0) for run in children),
    }


# ---------------------------------------------------------------------------------------------
# The tutorial way


def tutorial_train(exp: Experiment, splits: Splits, device: torch.device, log: Callable) -> float:
    """Training as the tutorials write it; `log(key, value, step)` once per value."""
    cfg = exp.train
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, splits.input_shape, splits.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weights = [p for p in model.parameters() if p.dim() > 1]
    # As the tutorials have it: the dataset on the host, each batch moved to the device.
    train_loader = DataLoader(
        TensorDataset(splits.x_train.cpu(), splits.y_train.cpu()),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    eval_loaders = [
        DataLoader(TensorDataset(xs.cpu(), ys.cpu()), batch_size=cfg.batch_size)
        for xs, ys in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val))
    ]
    val_loss = math.nan
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            if cfg.l1:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in weights)
            if cfg.l2:
                loss = loss + cfg.l2 * sum(p.pow(2).sum() for p in weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
            seen += len(yb)
        (train_loss, train_acc), (val_loss, val_acc) = (
            _tutorial_eval(model, loader, device) for loader in eval_loaders
        )
        with torch.no_grad():
            norm = math.sqrt(sum(p.pow(2).sum().item() for p in weights))
            small = sum((p.abs() < 1e-3).sum().item() for p in weights)
            sparsity = small / sum(p.numel() for p in weights)
        metrics = {
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "gap/loss": val_loss - train_loss,
            "gap/acc": train_acc - val_acc,
            "train/objective": total / seen,
            "weights/l2_norm": norm,
            "weights/sparsity": sparsity,
            "lr": optimizer.param_groups[0]["lr"],
        }
        for key, value in metrics.items():
            log(key, value, epoch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), path)
        mlflow.log_artifact(str(path))
    return val_loss


def _tutorial_eval(model, loader, device) -> tuple[float, float]:
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
    return loss / seen, correct / seen


def _log_metric(key: str, value: float, step: int) -> None:
    mlflow.log_metric(key, value, step=step)


def tutorial_trial(exp: Experiment, splits: Splits, device: torch.device, uri: str) -> float:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tutorial-trial")
    started = time.perf_counter()
    with mlflow.start_run():
        mlflow.log_params(exp.flat())
        tutorial_train(exp, splits, device, _log_metric)
    _sync(device)
    return time.perf_counter() - started


def tutorial_sweep(
    exp: Experiment, splits: Splits, device: torch.device, uri: str, trials: int, name: str
) -> tuple[float, str]:
    """Seconds for the tutorial sweep of `trials` trials, and how its runs were made."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)  # creates the database outside the timed part
    search = exp.sweep.search

    def objective(trial: optuna.Trial) -> float:
        values = {"model.dropout": trial.suggest_float("dropout", 0.0, search["dropout"].high)}
        for key in ("l1", "l2"):
            value = trial.suggest_float(key, search[key].low, search[key].high, log=True)
            values[f"train.{key}"] = (
                value if trial.suggest_categorical(f"{key}_on", [True, False]) else 0.0
            )
        return tutorial_train(exp.with_values(values), splits, device, _log_metric)

    callbacks: list = []
    try:
        from optuna_integration.mlflow import MLflowCallback

        with warnings.catch_warnings():  # deprecated since optuna 4.9, experimental decorator
            warnings.simplefilter("ignore")
            callback = MLflowCallback(
                tracking_uri=uri,
                metric_name="val_loss",
                create_experiment=False,
                mlflow_kwargs={"nested": True},
            )
            tracked = callback.track_in_mlflow()(objective)
        callbacks = [callback]
        how = "optuna_integration.mlflow.MLflowCallback (track_in_mlflow, nested runs)"
    except ImportError:

        def tracked(trial: optuna.Trial) -> float:
            with mlflow.start_run(run_name=str(trial.number), nested=True):
                value = objective(trial)
                mlflow.log_params(trial.params)
                mlflow.log_metric("val_loss", value)
                return value

        how = "hand-written nested mlflow run per trial (optuna-integration not installed)"
    started = time.perf_counter()
    with mlflow.start_run(run_name="tutorial-sweep"):
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=exp.seed)
        )
        study.optimize(tracked, n_trials=trials, callbacks=callbacks)
    _sync(device)
    return time.perf_counter() - started, how


# ---------------------------------------------------------------------------------------------
# As users run them: each sweep in a process of its own, whole wall time, start-up apart


def _child_env(threads: int) -> dict[str, str]:
    """The environment of a measured process. torch's default threads (`threads` 0) are what a
    user's shell gives it: no OMP_NUM_THREADS (a helper's own setting must not leak in)."""
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    if not threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key, None)
    return env


def as_user(
    kind: str, exp: Experiment, trials: int, threads: int, folder: Path, cache_dir: Path, device
) -> dict[str, Any]:
    """The floor or the tutorial sweep in its own process (bench/user.py): whole wall time,
    start-up (interpreter, imports, data, MLflow's database) = wall - the trials' own time."""
    label = f"{kind}-t{threads}-{time.monotonic_ns()}"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{label}.json"
    command = [
        *(sys.executable, "-m", "bench.user", kind, "--epochs", str(exp.train.max_epochs)),
        *("--trials", str(trials), "--threads", str(threads), "--device", device.type),
        *("--cache-dir", str(cache_dir), "--folder", str(folder / label), "--out", str(out)),
    ]
    started = time.perf_counter()
    _run_quietly(command, _child_env(threads), REPO)
    wall = time.perf_counter() - started
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    result["startup_seconds"] = wall - result["work_seconds"]
    return result


def _run_quietly(command: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run a measured process; its output is shown only when it fails."""
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise subprocess.CalledProcessError(done.returncode, command)


def toml_text(raw: dict[str, Any], prefix: str = "") -> str:
    """An experiment as TOML (no writer ships with Python): scalars, lists of scalars, tables."""
    lines, tables = [], []
    for key, value in raw.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    text = (f"[{prefix}]\n" if prefix and lines else "") + "".join(f"{x}\n" for x in lines)
    for key, value in tables:
        text += toml_text(value, f"{prefix}.{key}" if prefix else key)
    return text


def toml_value(value: Any) -> str:
    """One value as TOML: a CNN's blocks are lists of inline tables (`{kind = "max"}`), which
    JSON's `{"kind": "max"}` is not; None leaves its key out (the field's default)."""
    if isinstance(value, dict):
        items = (f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike


def studylib_as_user(
    exp: Experiment,
    trials: int,
    workers: int,
    folder: Path,
    cache_dir: Path,
    device,
    population: int = 1,
) -> dict[str, Any]:
    """`studylib sweep` as a user types it, in a process of its own on fresh stores: whole wall
    time; steady state = first trial run's start to last one's end (MLflow's own times);
    start-up = the rest (interpreter, imports, stores, parent run, worker processes)."""
    work = folder / f"cli-w{workers}-p{population}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    (work / ".studylib-cache").symlink_to(Path(cache_dir).resolve(), target_is_directory=True)
    (work / "bench.toml").write_text(toml_text(exp.model_dump(mode="json")))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    command = [
        *(sys.executable, "-m", "studylib", "sweep", "bench.toml", "--trials", str(trials)),
        *("--workers", str(workers), "--population", str(population), "--no-progress"),
        *("--tracking-uri", uri, "--storage", str(work / "optuna.journal")),
        *("--device", device.type),
    ]
    began = time.time()
    started = time.perf_counter()
    _run_quietly(command, _child_env(0), work)
    wall = time.perf_counter() - started
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(exp.name)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'", max_results=5000
    )
    assert len(children) == trials, (len(children), trials)
    first = min(run.info.start_time for run in children) / 1000
    last = max(run.info.end_time for run in children) / 1000
    return {
        "workers": workers,
        "population": population,
        "trials": trials,
        "wall_seconds": wall,
        "steady_seconds": last - first,
        "startup_seconds": wall - (last - first),
        "first_trial_after_seconds": first - began,
    }


def stats(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---------------------------------------------------------------------------------------------
# The sampler and the moonshot's CPU lower bound


MOONSHOT: dict[str, Any] = {
    "name": "moonshot",
    "seed": 0,
    "data": {"train_examples": 1000},
    "model": {"arch": "mlp", "hidden": [256, 256], "dropout": 0.0},
    "train": {
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": 100,
        "max_epochs": 100,
        "early_stopping": True,
        "patience": 10,
    },
    "sweep": {
        "baseline": True,
        "pruner": {"enabled": True, "startup_trials": 5, "warmup_epochs": 10},
        "search": BENCH_EXPERIMENT["sweep"]["search"],
    },
}


def noop_fit(
    model, splits, cfg, seed, on_epoch=None, speed=None, test_curve=False, prune_evaluate=False
):
    """`fit` without the training: a plausible curve per trial (falls, then rises: early
    stopping fires; some trials run worse than the median: pruned), fed to `on_epoch` exactly
    as `fit` does, the model's real weights kept. What is left is studylib's bookkeeping."""
    started = time.perf_counter()
    rng = random.Random(f"{seed}-{cfg.l1}-{cfg.l2}-{cfg.weight_decay}")
    bottom, level = rng.uniform(8, 80), rng.uniform(0.3, 0.9)
    history: list[dict[str, float]] = []
    best, best_epoch, waited, status = math.inf, 0, 0, "completed"
    for epoch in range(1, cfg.max_epochs + 1):
        train = level * math.exp(-epoch / 30) + 0.05
        val = level + 0.0004 * (epoch - bottom) ** 2
        metrics = dict.fromkeys(CURVE_KEYS, 0.0)
        metrics.update(
            {"train/loss": train, "val/loss": val, "gap/loss": val - train, "lr": cfg.lr}
        )
        metrics.update({"train/acc": 1 - train / 3, "val/acc": 1 - val / 3})
        metrics["gap/acc"] = metrics["train/acc"] - metrics["val/acc"]
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)  # the sweep's callback: curve, progress, pruning
        if val < best - cfg.min_delta:
            best, best_epoch, waited = val, epoch, 0
        else:
            waited += 1
            if cfg.early_stopping and waited >= cfg.patience:
                status = "early_stopped"
                break
    selected = best_epoch if cfg.early_stopping else len(history)
    final = final_metrics(history, best_epoch, selected, cfg)
    final.update(test_loss=history[selected - 1]["val/loss"], test_acc=0.5)
    return TrainResult(
        history,
        best_epoch,
        len(history),
        selected,
        status,
        f"no-op fit ({status})",
        final,
        state_dict=model.state_dict(),
        seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def timed(owner: Any, name: str, spent: list[float]) -> Iterator[None]:
    """Add the time every call of `owner.name` takes to `spent[0]` while inside."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def moonshot(
    folder: Path,
    cache_dir: Path,
    trials: int,
    device: torch.device | None = None,
    population: int = 1,
    noop: bool = True,
) -> dict[str, Any]:
    """The moonshot sweep (MLP, 1,000 examples, up to 100 epochs, patience 10, median pruning,
    each trial its own MLflow child run with its full curves and weights), in one process
    with its writer. `noop`: the CPU lower bound, `fit` replaced by a no-op (populations left
    out: without training there is nothing for them to batch); else real training, on
    `device`, `population` trials at once (the GPU run of `make gpu-check`)."""
    import studylib.sweep.trial as trial_module  # noqa: PLC0415  # patched: the no-op fit

    device = device or torch.device("cpu")
    exp = Experiment.model_validate(MOONSHOT)
    settings = _settings(folder, f"moonshot-{trials}-{noop}", cache_dir, device)
    Tracker(settings.tracking_uri, exp.name, settings.artifact_root)  # the database exists
    sampler = [0.0]
    started = time.perf_counter()
    real_fit = trial_module.fit
    if noop:
        trial_module.fit = noop_fit
    try:
        with timed(optuna.Study, "ask", sampler), timed(trial_module, "suggest", sampler):
            summary = run_sweep(exp, settings, trials=trials, population=population)
    finally:
        trial_module.fit = real_fit
    seconds = time.perf_counter() - started
    runs = child_timing(settings.tracking_uri, exp.name, summary.parent_run_id)
    study = optuna.load_study(study_name=exp.name, storage=make_storage(settings.storage))
    states = [t.state.name for t in study.trials]
    return {
        "trials": trials,
        "noop": noop,
        "device": str(device),
        "population": population,
        "cpu_seconds": seconds,
        "sampler_seconds": sampler[0],
        "sampler_share": sampler[0] / seconds,
        "writer_cpu_seconds": summary.writer_seconds,
        "waited_for_writer_seconds": summary.writer_waited,
        "first_trial_after_seconds": runs["first_trial_after_seconds"],
        "pruned": states.count("PRUNED"),
        "completed": states.count("COMPLETE"),
    }


def sampler_cost(counts: tuple[int, ...] = (100, 1000), asks: int = 10) -> dict[str, float]:
    """Milliseconds of one ask (and the suggestions a trial makes) of the sweep's sampler
    (constant-liar TPE, study.sampler_for) over a study already holding `count` trials."""
    exp = family_experiment(FAMILIES["mlp"], 1)
    out = {}
    rng = random.Random(0)
    for count in counts:
        study = optuna.create_study(sampler=sampler_for(0, count))
        for number in range(count):
            trial = optuna.trial.create_trial(
                params={
                    "dropout": rng.uniform(0, 0.5),
                    "l1": 10 ** rng.uniform(-6, -3),
                    "l1_on": rng.random() < 0.5,
                    "l2": 10 ** rng.uniform(-6, -2),
                    "l2_on": rng.random() < 0.5,
                },
                distributions=distributions(exp.sweep.search),
                value=rng.uniform(0.3, 1.5) + 0 * number,
            )
            study.add_trial(trial)
        times = []
        for _ in range(asks):
            started = time.perf_counter()
            trial = study.ask()
            suggest(trial, exp.sweep.search)
            times.append(time.perf_counter() - started)
            study.tell(trial, rng.uniform(0.3, 1.5))
        out[str(count)] = 1000 * median(times)
    return out


# ---------------------------------------------------------------------------------------------
# Report at scale and leaks


def synthetic_store(uri: str, artifact_root: Path, runs: int, epochs: int) -> tuple[str, float]:
    """Log `runs` plausible trial runs of `epochs` epochs; the study name and seconds taken."""
    name = "report-scale"
    started = time.perf_counter()
    exp = family_experiment(FAMILIES["mlp"], epochs)
    tracker = Tracker(uri, name, artifact_root)
    parent = tracker.start_run("sweep", tags={ROLE_TAG: "sweep", STUDY_TAG: name})
    rng = np.random.default_rng(0)
    epoch_axis = np.arange(1, epochs + 1)
    for number in range(runs):
        values = {
            "model.dropout": float(rng.uniform(0, 0.5)),
            "train.l1": float(10 ** rng.uniform(-6, -3)) if rng.random() < 0.5 else 0.0,
            "train.l2": float(10 ** rng.uniform(-6, -2)) if rng.random() < 0.5 else 0.0,
        }
        cfg = exp.with_values(values)
        tags = {ROLE_TAG: "trial", STUDY_TAG: name, TRIAL_TAG: str(number)}
        if number == 0:
            tags["studylib.baseline"] = "true"
        run = tracker.start_run(f"trial-{number:04d}", tags=tags, parent_id=parent.run_id)
        run.log_params(cfg.flat())
        # Train loss falls; validation loss falls, then rises: an overfitting curve.
        train = 2.3 * np.exp(-epoch_axis / rng.uniform(10, 30)) + 0.05
        val = train + rng.uniform(0.001, 0.01) * (epoch_axis - rng.uniform(5, 30)) ** 2 / 30 + 0.2
        history = []
        for epoch, (tr, va) in enumerate(zip(train, val, strict=True), start=1):
            metrics = dict.fromkeys(CURVE_KEYS, 0.0)
            metrics.update({"train/loss": tr, "val/loss": va, "gap/loss": va - tr})
            metrics.update({"train/acc": 1 - tr / 3, "val/acc": 1 - va / 3, "lr": 1e-3})
            metrics = {k: float(v) for k, v in metrics.items()}
            metrics["gap/acc"] = metrics["train/acc"] - metrics["val/acc"]
            history.append(metrics)
            run.log_epoch(epoch, metrics)
        best = int(np.argmin(val)) + 1
        final = final_metrics(history, best, best)
        final.update(test_loss=float(val[best - 1]), test_acc=float(1 - val[best - 1] / 3))
        run.finish("FINISHED", tags={STATUS_TAG: "early_stopped"}, metrics=final)
    parent.finish("FINISHED")
    return name, time.perf_counter() - started


def report_at_scale(runs: int, epochs: int, folder: Path) -> dict[str, float]:
    from studylib.report import write_report
    from studylib.report.results import CURVE_KEYS, load_curves, load_runs

    uri = f"sqlite:///{folder / 'report-scale.db'}"
    name, logging_seconds = synthetic_store(uri, folder / "artifacts", runs, epochs)
    started = time.perf_counter()
    write_report(uri, [name], folder / "report")
    report_seconds = time.perf_counter() - started
    run_ids = list(load_runs(name, uri)["run_id"])
    started = time.perf_counter()
    curves = load_curves(run_ids, CURVE_KEYS, uri)
    curves_seconds = time.perf_counter() - started
    assert len(curves) == runs * epochs * 4, len(curves)
    return {
        "runs": runs,
        "epochs": epochs,
        "logging_seconds": logging_seconds,
        "report_seconds": report_seconds,
        "load_all_curves_seconds": curves_seconds,
    }


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def leak_check(
    folder: Path, cache_dir: Path, early: int, late: int, device: torch.device | None = None
) -> dict[str, float]:
    """Resident memory (and CUDA memory held) after `early` and after `late` trials of one
    sweep in this process."""
    device = device or torch.device("cpu")
    raw = json.loads(json.dumps(BENCH_EXPERIMENT))
    raw.update(name="leaks", data={"num_train": 600, "num_test": 200, "train_examples": 300})
    raw["model"] = {"arch": "mlp", "hidden": [32], "dropout": 0.1}
    raw["train"].update(max_epochs=2, batch_size=50)
    exp = Experiment.model_validate(raw)
    folder.mkdir(parents=True, exist_ok=True)
    settings = _settings(folder, "leaks", cache_dir, device)
    out: dict[str, float] = {"trials_early": early, "trials_late": late}
    for label, trials in (("early", early), ("late", late)):
        run_sweep(exp, settings, trials=trials)
        gc.collect()
        out[f"rss_mb_{label}"] = resident_bytes() / 2**20
        if device.type == "cuda":
            out[f"cuda_mb_{label}"] = torch.cuda.memory_allocated(device) / 2**20
    out["leak_ratio"] = out["rss_mb_late"] / out["rss_mb_early"]
    return out


# ---------------------------------------------------------------------------------------------
# Running it all


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _settings(folder: Path, label: str, cache_dir: Path, device: torch.device) -> Settings:
    return Settings(
        tracking_uri=f"sqlite:///{folder / label}.db",
        storage=str(folder / f"{label}.journal"),
        device=device.type,
        cache_dir=cache_dir,
        artifact_root=folder / f"{label}-artifacts",
        progress=False,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_trials(exp, splits, folder, repeats, device, cache_dir) -> dict[str, Any]:
    """Floor, studylib trial (as a sweep runs it: records handed to a writer process; and with
    a writer thread, and written at once) and tutorial trial, interleaved, `repeats` times.

    Steady state: a writer keeps writing trial N while the trainer goes on; before each floor
    run it is let finish (untimed), so that its work lands on studylib's side only."""
    tracker = Tracker(f"sqlite:///{folder / 'trial.db'}", "bench-trial", folder / "art")
    uri = f"sqlite:///{folder / 'tutorial-trial.db'}"
    writers = trial_writers(exp, folder, cache_dir, device)
    # Warm-up: first calls pay for imports, allocator growth, MLflow's table creation.
    one = exp.with_values({"train.max_epochs": 1})
    floor_trial(one, splits)
    studylib_trial(one, splits, tracker, Speed())
    for writer in writers.values():
        studylib_trial(one, splits, tracker, Speed(), writer)
        writer.settle()
    tutorial_trial(one, splits, device, uri)
    spent = {mode: w.seconds for mode, w in writers.items()}
    keys = ("floor", "floor_cpu", "trial", "trial_cpu", "fit", "thread", "thread_fit", "sync")
    runs: dict[str, list[float]] = {k: [] for k in (*keys, "sync_fit", "tutorial")}
    gap = 0.0
    for _ in range(repeats):  # interleaved, so that a change in load hits all alike
        for writer in writers.values():
            writer.settle()
        seconds, cpu, floor_curve = floor_trial(exp, splits)
        runs["floor"].append(seconds)
        runs["floor_cpu"].append(cpu)
        seconds, cpu, fit_seconds, trial_curve = studylib_trial(
            exp, splits, tracker, Speed(), writers["process"]
        )
        runs["trial"].append(seconds)
        runs["trial_cpu"].append(cpu)
        runs["fit"].append(fit_seconds)
        seconds, _, fit_seconds, _ = studylib_trial(
            exp, splits, tracker, Speed(), writers["thread"]
        )
        runs["thread"].append(seconds)
        runs["thread_fit"].append(fit_seconds)
        seconds, _, fit_seconds, _ = studylib_trial(exp, splits, tracker, Speed())
        runs["sync"].append(seconds)
        runs["sync_fit"].append(fit_seconds)
        runs["tutorial"].append(tutorial_trial(exp, splits, device, uri))
        gap = max(gap, max(abs(a - b) for a, b in zip(floor_curve, trial_curve, strict=True)))
    writer_ms = {}
    for mode, writer in writers.items():
        writer.close()
        writer_ms[mode] = 1000 * (writer.seconds - spent[mode]) / repeats  # one trial a repeat

    def on_path(total: str, fit: str) -> list[float]:
        return [1000 * (t - f) for t, f in zip(runs[total], runs[fit], strict=True)]

    return {
        "floor_seconds": runs["floor"],
        "trial_seconds": runs["trial"],
        "fit_seconds": runs["fit"],  # the trial's training loop alone, without its MLflow run
        "tutorial_trial_seconds": runs["tutorial"],
        "floor_cpu_seconds": runs["floor_cpu"],
        "trial_cpu_seconds": runs["trial_cpu"],
        "trial_thread_seconds": runs["thread"],
        "trial_written_at_once_seconds": runs["sync"],
        "trial_over_floor": median(runs["trial"]) / median(runs["floor"]),
        # Per repeat: each studylib trial against the floor run just before it.
        "trial_over_floor_each": [t / f for t, f in zip(runs["trial"], runs["floor"], strict=True)],
        "thread_over_floor_each": [
            t / f for t, f in zip(runs["thread"], runs["floor"], strict=True)
        ],
        "written_at_once_over_floor_each": [
            t / f for t, f in zip(runs["sync"], runs["floor"], strict=True)
        ],
        # Process CPU time: what another process's load changes least (CPU runs only).
        "trial_over_floor_cpu_time": median(runs["trial_cpu"]) / median(runs["floor_cpu"]),
        "fit_over_floor": median(runs["fit"]) / median(runs["floor"]),
        # On the training path outside fit: model build, recording the run, handing it over.
        "on_path_ms": on_path("trial", "fit"),
        "on_path_thread_ms": on_path("thread", "thread_fit"),
        "on_path_written_at_once_ms": on_path("sync", "sync_fit"),
        "writer_ms": [writer_ms["process"]],  # its own CPU time a trial, off the path
        "writer_thread_ms": [writer_ms["thread"]],
        "run_ms": median(on_path("trial", "fit")),
        "tutorial_over_trial": median(runs["tutorial"]) / median(runs["trial"]),
        "floor_vs_trial_max_val_loss_difference": gap,
    }


def bench_knobs(exp, splits, folder, repeats) -> dict[str, Any]:
    """One studylib trial under each speed knob; the first trial of each pays compilation."""
    tracker = Tracker(f"sqlite:///{folder / 'knobs.db'}", "bench-knobs", folder / "art")
    out = {}
    for label, speed in {
        "fp32": Speed(),
        "bf16": Speed(precision="bf16"),
        "compile": Speed(compile=True),
        "bf16+compile": Speed(precision="bf16", compile=True),
    }.items():
        try:
            seconds = [studylib_trial(exp, splits, tracker, speed)[0] for _ in range(repeats + 1)]
        except Exception as exc:  # e.g. no compiler toolchain for torch.compile
            out[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        out[label] = {"first_seconds": seconds[0], "seconds": seconds[1:]}
    base = median(out["fp32"]["seconds"])
    for entry in out.values():
        if "seconds" in entry:
            entry["speedup_vs_fp32"] = base / median(entry["seconds"])
    return out


def bench_sweeps(exp, splits, folder, args, device, family) -> dict[str, Any]:
    """Whole sweeps as users run them (each its own process), and populations in-process.

    Lines, each repeated: the floor at one thread (its per-epoch time gives the cores'
    steady-state limit: floor epoch x epochs x trials / workers), the tutorial sweep at
    torch's default threads and at one thread, `studylib sweep --workers W` for each W."""
    cores = machine_cores()
    out: dict[str, Any] = {"trials": args.trials, "cores": cores, "epochs": exp.train.max_epochs}
    floor_runs, tutorial_runs = [], {"default": [], "one": []}
    cli: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
    user_folder = folder / f"users-{family}"
    floor_trials = min(args.trials, 5)  # its per-epoch time is all it is needed for
    for repeat in range(args.sweep_repeats):
        floor_runs.append(
            as_user("floor", exp, floor_trials, 1, user_folder, args.cache_dir, device)
        )
        if repeat < args.tutorial_repeats:
            for line, threads in (("default", 0), ("one", 1)):
                tutorial_runs[line].append(
                    as_user(
                        "tutorial", exp, args.trials, threads, user_folder, args.cache_dir, device
                    )
                )
        for workers in args.workers:
            cli[workers].append(
                studylib_as_user(exp, args.trials, workers, user_folder, args.cache_dir, device)
            )
    epochs, trials = exp.train.max_epochs, args.trials
    floor_epoch = [median(run["trial_seconds"]) / epochs for run in floor_runs]
    out["floor_epoch_seconds_one_thread"] = floor_epoch
    out["floor_startup_seconds"] = [run["startup_seconds"] for run in floor_runs]
    for line, runs in tutorial_runs.items():
        out[f"tutorial_{line}"] = {
            "threads": runs[0]["threads"],
            "wall_seconds": [r["wall_seconds"] for r in runs],
            "work_seconds": [r["work_seconds"] for r in runs],
            "startup_seconds": [r["startup_seconds"] for r in runs],
            "import_seconds": [r["import_seconds"] for r in runs],
        }
    out["tutorial_how"] = tutorial_runs["default"][0]["how"]
    out["studylib"] = {}
    for workers, runs in cli.items():
        # The cores' limit for this many workers, per repeat (each against its own floor).
        limit = [e * epochs * trials / workers for e in floor_epoch]
        out["studylib"][workers] = {
            "threads_per_worker": threads_per_worker(workers, cores),
            "wall_seconds": [r["wall_seconds"] for r in runs],
            "steady_seconds": [r["steady_seconds"] for r in runs],
            "startup_seconds": [r["startup_seconds"] for r in runs],
            "first_trial_after_seconds": [r["first_trial_after_seconds"] for r in runs],
            "limit_seconds": limit,
            "steady_over_limit": [
                r["steady_seconds"] / x for r, x in zip(runs, limit, strict=True)
            ],
            "trials_per_minute": [60 * trials / r["wall_seconds"] for r in runs],
        }
    best = min(out["studylib"], key=lambda w: median(out["studylib"][w]["wall_seconds"]))
    out["best_workers"] = best
    chosen = out["studylib"][best]
    tutorial = out["tutorial_default"]["wall_seconds"]
    # Per repeat, pairing each tutorial run with the studylib run of the same repeat.
    out["tutorial_over_studylib"] = [
        t / s for t, s in zip(tutorial, chosen["wall_seconds"], strict=False)
    ]
    out["tutorial_one_over_studylib_one"] = [
        t / s
        for t, s in zip(
            out["tutorial_one"]["wall_seconds"],
            out["studylib"][min(cli)]["wall_seconds"],
            strict=False,
        )
    ]
    out["tutorial_over_studylib_steady"] = [
        t / s
        for t, s in zip(
            out["tutorial_default"]["work_seconds"], chosen["steady_seconds"], strict=False
        )
    ]
    # The best a sweep could do on these cores: the floor's limit plus studylib's own start-up.
    out["tutorial_over_limit"] = [
        t / (x + s)
        for t, x, s in zip(
            tutorial, chosen["limit_seconds"], chosen["startup_seconds"], strict=False
        )
    ]
    out["sweep_over_limit"] = chosen["steady_over_limit"]
    if 1 in args.workers:  # in-process, one worker: studylib's own time outside fit
        label = f"sweep-{family}-inproc"
        run = studylib_sweep(
            exp.with_values({"name": label}),
            _settings(folder, label, args.cache_dir, device),
            args.trials,
            threads=args.threads,
        )
        out["overhead_ms"] = run["overhead_ms"]
        out["setup_seconds"] = run["setup_seconds"]
        out.update(overhead_split(exp, folder, args, device, family, out["overhead_ms"]))
    if args.population > 1:
        out.update(bench_population(exp, folder, args, device, family))
    return out


def bench_population(exp, folder, args, device, family) -> dict[str, Any]:
    """Population sweeps in one process, and at the most workers, each training populations
    (enough trials that every worker gets at least one population), against the same sweep
    trained one trial at a time, in-process."""
    population_workers = sorted({1, max(args.workers)})
    rates: dict[int, list[float]] = {}
    sequential: dict[int, list[float]] = {}
    trials_of: dict[int, int] = {}
    for workers in population_workers:
        trials = max(args.trials, args.population * workers)
        trials_of[workers] = trials
        for kind, size in (("population", args.population), ("sequential", 1)):
            label = f"sweep-{family}-{kind}-w{workers}"
            try:
                run = studylib_sweep(
                    exp.with_values({"name": label}),
                    _settings(folder, label, args.cache_dir, device),
                    trials,
                    workers=workers,
                    population=size,
                    threads=args.threads,
                )
            except ConfigError as exc:  # e.g. torch.vmap has no batching rule for a GRU
                return {"population_unsupported": str(exc)}
            (rates if size > 1 else sequential).setdefault(workers, []).append(
                run["trials_per_minute"]
            )
    best = max(rates, key=lambda w: median(rates[w]))
    best_sequential = max(median(v) for v in sequential.values())
    return {
        "population": {
            "size": args.population,
            "trials": trials_of,
            "trials_per_minute": rates,
            "sequential_trials_per_minute": sequential,
            "best_workers": best,
            "over_sequential_one_worker": median(rates[1]) / median(sequential[1]),
            "over_best_workers": median(rates[best]) / best_sequential,
        }
    }


def overhead_split(exp, folder, args, device, family, overhead_ms: float) -> dict[str, float]:
    """The overhead outside `fit` as a fixed cost per trial plus a cost per epoch.

    A sweep of the same trials at one epoch gives the fixed part (Optuna's ask and tell, the
    MLflow run's creation, params, closing batch and artifacts: what the target is about);
    the rest grows with the epochs: the curve's values, ten an epoch, that the closing batch
    writes (MLflow's SQLite store spends about 0.04 ms a value). A trial longer than the
    tracker's flush interval (5 s) writes most of its curve during training instead, inside
    `fit`, where the trial / floor ratio counts it and this split does not.
    """
    epochs = exp.train.max_epochs
    label = f"sweep-{family}-1epoch"
    short = exp.with_values({"name": label, "train.max_epochs": 1, "train.patience": 2})
    runs = [
        studylib_sweep(
            short.with_values({"name": f"{label}-{repeat}"}),
            _settings(folder, f"{label}-{repeat}", args.cache_dir, device),
            args.trials,
            threads=args.threads,
        )["overhead_ms"]
        for repeat in range(args.sweep_repeats)
    ]
    fixed = median(runs)
    return {
        "fixed_overhead_ms": fixed,
        "overhead_per_epoch_ms": (overhead_ms - fixed) / (epochs - 1) if epochs > 1 else 0.0,
    }


def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Every section asked for; the JSON at `path` is rewritten after each one, so a run cut
    short (a timeout on a lent GPU) still leaves what it measured."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = {
        "machine": machine_facts(device),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average_before": os.getloadavg(),
        "families": {},
        "absent_families": [],
        "section_seconds": {},
    }

    @contextlib.contextmanager
    def section(name: str, text: str):
        print(f"[bench] {text}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        yield
        results["section_seconds"][name] = time.perf_counter() - started
        save(results, path)

    with tempfile.TemporaryDirectory(prefix="studylib-bench-") as tmp:
        folder = Path(tmp)
        for family in args.families:
            exp = family_experiment(FAMILIES[family], args.epochs)
            if exp is None:
                results["absent_families"].append(family)
                continue
            splits = load_splits(exp.data, exp.seed, args.cache_dir).to(device)
            entry = results["families"][family] = {}
            if "trial" in args.sections:
                entry["trials"] = {}
                for length in args.trial_epochs:
                    with section(f"{family}/trial{length}", f"{family}: {length}-epoch trials"):
                        entry["trials"][str(length)] = bench_trials(
                            exp.with_values(
                                {"train.max_epochs": length, "train.patience": length + 1}
                            ),
                            splits,
                            folder,
                            args.repeats,
                            device,
                            args.cache_dir,
                        )
            if "knobs" in args.sections:
                with section(f"{family}/knobs", f"{family}: speed knobs"):
                    entry["knobs"] = bench_knobs(exp, splits, folder, args.repeats)
            if "sweep" in args.sections:
                with section(f"{family}/sweep", f"{family}: sweeps of {args.trials} trials"):
                    entry["sweep"] = bench_sweeps(exp, splits, folder, args, device, family)
        if "sampler" in args.sections:
            with section("sampler", "sampler: one ask at 100 and 1,000 trials"):
                results["sampler"] = sampler_cost()
        if "moonshot" in args.sections:
            with section(
                "moonshot", f"moonshot CPU lower bound: {args.moonshot_trials} no-op trials"
            ):
                results["moonshot"] = moonshot(folder, args.cache_dir, args.moonshot_trials)
        if "moonshot_gpu" in args.sections:
            with section("moonshot_gpu", f"moonshot on {device}: {args.moonshot_trials} trials"):
                results["moonshot_gpu"] = moonshot(
                    folder,
                    args.cache_dir,
                    args.moonshot_trials,
                    device,
                    args.population,
                    noop=False,
                )
        if "report" in args.sections:
            with section("report", f"report: {args.report_runs} runs x 100 epochs"):
                results["report"] = report_at_scale(args.report_runs, 100, folder)
        if "leaks" in args.sections:
            with section("leaks", "leaks: 20 then 200 trials in this process"):
                results["leaks"] = leak_check(folder, args.cache_dir, 20, 200, device)
    results["load_average_after"] = os.getloadavg()
    results["targets"] = check_targets(results, device)
    return results


def check_targets(results: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every target with the median, min and max of its repeats, and whether the median meets
    it; a target whose measure did not run is left out."""
    mlp = results["families"].get("mlp", {})
    gpu = device.type == "cuda"
    trials = mlp.get("trials", {})
    sweep = mlp.get("sweep", {})
    measured: dict[str, Any] = {
        "trial_over_floor_10": trials.get("10", {}).get("trial_over_floor_each"),
        "trial_over_floor_50": trials.get("50", {}).get("trial_over_floor_each"),
        "on_path_ms": next((t["on_path_ms"] for t in trials.values() if "on_path_ms" in t), None),
        "sweep_over_limit": sweep.get("sweep_over_limit"),
        "moonshot_cpu_seconds": (
            results["moonshot"]["cpu_seconds"]
            if results.get("moonshot", {}).get("trials") == 1000
            else None
        ),
        "leak_ratio": results.get("leaks", {}).get("leak_ratio"),
    }
    key = "tutorial_over_studylib_sweep_gpu" if gpu else "tutorial_over_studylib_sweep_cpu"
    measured[key] = sweep.get("tutorial_over_studylib")
    report = results.get("report", {})
    if report.get("runs") == 1000:
        measured["report_seconds"] = report["report_seconds"]
    if gpu:
        measured["population_over_sequential_gpu"] = sweep.get("population", {}).get(
            "over_best_workers"
        )
        if results.get("moonshot_gpu", {}).get("trials") == 1000:
            measured["moonshot_gpu_seconds"] = results["moonshot_gpu"]["cpu_seconds"]
    out = {}
    for name, value in measured.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        op, target, label = TARGETS[name]
        mid = median(values)
        ok = mid <= target if op == "<=" else mid >= target if op == ">=" else mid < target
        out[name] = {
            "label": label,
            "value": mid,
            "min": min(values),
            "max": max(values),
            "repeats": len(values),
            "target": f"{op} {target}",
            "met": ok,
        }
    if "tutorial_over_limit" in sweep and key in out:
        ceiling = median(sweep["tutorial_over_limit"])
        out[key]["note"] = (
            f"the cores' own limit allows {ceiling:.2f} (tutorial / (floor limit + start-up))"
        )
    moon = results.get("moonshot")
    if moon and moon["trials"] != 1000:
        out["moonshot_cpu_seconds"] = {
            "label": TARGETS["moonshot_cpu_seconds"][2],
            "value": None,
            "target": "< 60.0",
            "met": None,
            "note": f"measured at {moon['trials']} trials only (quick mode): "
            f"{moon['cpu_seconds']:.1f} s",
        }
    if "report_seconds" not in measured and report:
        out["report_seconds"] = {
            "label": TARGETS["report_seconds"][2],
            "value": None,
            "target": "< 30.0",
            "met": None,
            "note": f"measured at {report['runs']} runs only (quick mode): not the target scale",
        }
    return out


def machine_facts(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts = {
        "cpu": cpu,
        "cores": machine_cores(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
        "mlflow": mlflow.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


# ---------------------------------------------------------------------------------------------
# Output


def table(results: dict[str, Any]) -> str:
    """The printed summary: medians over repeats, ratios, targets."""
    facts, epochs = results["machine"], results["settings"]["epochs"]
    gpu = f", {facts['gpu']}" if "gpu" in facts else ""
    rows: list[tuple[str, str]] = []
    for family, entry in results["families"].items():
        rows += [(f"{family}: {label}", value) for label, value in family_rows(entry, epochs)]
    if "report" in results:
        rep = results["report"]
        rows += [
            (
                f"report of {rep['runs']} runs x {rep['epochs']} epochs",
                f"{rep['report_seconds']:.1f} s",
            ),
            (f"load_curves of all {rep['runs']} runs", f"{rep['load_all_curves_seconds']:.1f} s"),
        ]
    if "leaks" in results:
        leak = results["leaks"]
        rows += [
            (f"memory after {leak['trials_early']} trials", f"{leak['rss_mb_early']:.0f} MB"),
            (f"memory after {leak['trials_late']} trials", f"{leak['rss_mb_late']:.0f} MB"),
        ]
    if "sampler" in results:
        for count, ms in results["sampler"].items():
            rows.append((f"sampler: one ask + suggestions over {count} trials", f"{ms:.1f} ms"))
    for key in ("moonshot", "moonshot_gpu"):
        if key not in results:
            continue
        moon = results[key]
        what = (
            f"moonshot CPU bound: {moon['trials']} no-op trials"
            if moon["noop"]
            else f"moonshot on {moon['device']}: {moon['trials']} trials, population "
            f"{moon['population']}"
        )
        rows += [
            (f"{what}, whole sweep", f"{moon['cpu_seconds']:.1f} s"),
            ("  of which the sampler (ask + suggestions)", f"{moon['sampler_seconds']:.1f} s"),
            ("  trainer waiting for its writer", f"{moon['waited_for_writer_seconds']:.1f} s"),
            ("  the writer's own CPU time (off the path)", f"{moon['writer_cpu_seconds']:.1f} s"),
            ("  start-up: to the first trial's run", f"{moon['first_trial_after_seconds']:.1f} s"),
            ("  trials completed / pruned", f"{moon['completed']} / {moon['pruned']}"),
        ]
    lines = [
        f"studylib bench: {facts['cpu']}, {facts['cores']} cores, {facts['torch_threads']} torch "
        f"threads{gpu}; device {facts['device']}",
        f"load average before {_loads(results['load_average_before'])}, after "
        f"{_loads(results['load_average_after'])} (1/5/15 min)",
        "",
        *(f"{label:60s} {value:>12s}" for label, value in rows),
    ]
    if results["absent_families"]:
        lines.append(f"families not present yet: {', '.join(results['absent_families'])}")
    lines += ["", "targets:"]
    for entry in results["targets"].values():
        value = "-" if entry["value"] is None else f"{entry['value']:.3g}"
        met = {True: "met", False: "MISSED", None: "n/a"}[entry["met"]]
        note = entry.get("note", "")
        lines.append(f"  {entry['label']:56s} {value:>8s} {entry['target']:>8s}  {met} {note}")
    return "\n".join(lines)


def family_rows(entry: dict[str, Any], epochs: int) -> list[tuple[str, str]]:
    rows = []
    for length, trial in entry.get("trials", {}).items():
        rows += [
            (f"floor, one trial of {length} epochs", _s(trial["floor_seconds"])),
            ("studylib trial (as in a sweep)", _s(trial["trial_seconds"])),
            ("tutorial trial (DataLoader, log_metric)", _s(trial["tutorial_trial_seconds"])),
            ("studylib / floor", _range(trial["trial_over_floor_each"], ".3f")),
            ("studylib / floor, in process CPU time", f"{trial['trial_over_floor_cpu_time']:.3f}"),
            ("fit() alone / floor: the training loop", f"{trial['fit_over_floor']:.3f}"),
            ("trial outside fit(), on the training path", f"{trial['run_ms']:.1f} ms"),
            ("tutorial / studylib, one trial", f"{trial['tutorial_over_trial']:.2f}"),
            (
                "max |val loss floor - studylib|",
                f"{trial['floor_vs_trial_max_val_loss_difference']:.1e}",
            ),
        ]
        if "on_path_ms" in trial:
            rows += [
                ("bookkeeping on the training path a trial", _range(trial["on_path_ms"], ".2f")),
                (
                    "  the writer's own time a trial (off the path)",
                    _range(trial["writer_ms"], ".1f"),
                ),
            ]
    for label, knob in entry.get("knobs", {}).items():
        rows.append(
            (
                f"knob {label}: speed vs fp32",
                f"x{knob['speedup_vs_fp32']:.2f}" if "seconds" in knob else "error",
            )
        )
    sweep = entry.get("sweep")
    if not sweep:
        return rows
    cores, trials, length = sweep["cores"], sweep["trials"], sweep["epochs"]
    rows.append((f"sweeps of {trials} trials x {length} epochs, {cores} cores", ""))
    rows.append(
        (
            "floor epoch at 1 thread (own process)",
            _range(sweep["floor_epoch_seconds_one_thread"], ".4f", " s"),
        )
    )
    for line in ("default", "one"):
        tut = sweep[f"tutorial_{line}"]
        rows += [
            (
                f"tutorial sweep, own process, {tut['threads']} thread(s): whole",
                _range(tut["wall_seconds"], ".1f", " s"),
            ),
            (
                "  of which start-up (interpreter, imports, data)",
                _range(tut["startup_seconds"], ".1f", " s"),
            ),
        ]
    for workers, run in sweep["studylib"].items():
        who = f"{workers} worker(s) x {run['threads_per_worker']} thread(s)"
        rows += [
            (
                f"studylib sweep, own process, {who}: whole",
                _range(run["wall_seconds"], ".1f", " s"),
            ),
            (
                "  steady state (first trial start to last end)",
                _range(run["steady_seconds"], ".1f", " s"),
            ),
            (
                "  start-up (imports, stores, workers) and drain",
                _range(run["startup_seconds"], ".1f", " s"),
            ),
            (
                "  cores' limit: floor epoch x epochs x trials / workers",
                _range(run["limit_seconds"], ".1f", " s"),
            ),
            ("  steady state / cores' limit", _range(run["steady_over_limit"], ".3f")),
        ]
    best = sweep["best_workers"]
    rows += [
        (
            f"tutorial ({sweep['tutorial_default']['threads']} threads) / studylib ({best} workers), whole",
            _range(sweep["tutorial_over_studylib"], ".2f"),
        ),
        ("  the same, steady state only", _range(sweep["tutorial_over_studylib_steady"], ".2f")),
        (
            "  what the cores allow: tutorial / (limit + start-up)",
            _range(sweep["tutorial_over_limit"], ".2f"),
        ),
        (
            "tutorial (1 thread) / studylib (1 worker, 1 core each), whole",
            _range(sweep["tutorial_one_over_studylib_one"], ".2f"),
        ),
    ]
    if "population" in sweep:
        pop = sweep["population"]
        for workers, rates in pop["trials_per_minute"].items():
            rows.append(
                (
                    f"population of {pop['size']}, {workers} worker(s), {pop['trials'][workers]} "
                    "trials: trials/min",
                    f"{median(rates):.1f}",
                )
            )
        rows += [
            (
                "population (1 worker) / sequential (1 worker)",
                f"{pop['over_sequential_one_worker']:.2f}",
            ),
            (
                f"population ({pop['best_workers']} workers) / sequential (best workers)",
                f"{pop['over_best_workers']:.2f}",
            ),
        ]
    elif "population_unsupported" in sweep:
        rows.append(("population", "not supported: " + sweep["population_unsupported"][:60]))
    if "overhead_ms" in sweep:
        rows += [
            ("in-process sweep: time outside fit a trial", f"{sweep['overhead_ms']:.1f} ms"),
            (
                "  of which fixed (the same trials at 1 epoch)",
                f"{sweep['fixed_overhead_ms']:.1f} ms",
            ),
            (
                "  and per epoch",
                f"{sweep['overhead_per_epoch_ms']:.2f} ms",
            ),
            ("fixed cost per sweep invocation", f"{sweep['setup_seconds']:.2f} s"),
        ]
    return rows


def _range(values: list[float], spec: str, unit: str = "") -> str:
    """median (min-max) of repeats."""
    if len(values) == 1:
        return f"{values[0]:{spec}}{unit}"
    return f"{median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}}){unit}"


def _s(values: list[float]) -> str:
    return f"{median(values):.3f} s"


def _loads(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def output_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "bench.json"
    return Path("bench/out/bench.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, epochs, trials, runs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--sections", default=None, help="of trial,sweep,report,leaks,knobs")
    parser.add_argument("--repeats", type=int, help="repeats of each single-trial measure")
    parser.add_argument("--sweep-repeats", type=int, help="repeats of each sweep")
    parser.add_argument(
        "--tutorial-repeats", type=int, help="repeats of the tutorial sweeps (the slowest)"
    )
    parser.add_argument(
        "--trial-epochs", default="10,50", help="trial lengths of the trial section (10,50)"
    )
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--trials", type=int, help="trials per sweep")
    parser.add_argument(
        "--workers", default=None, help="worker counts, e.g. 1,2 (default 1..cores)"
    )
    parser.add_argument("--population", type=int, help="population size (1: skip)")
    parser.add_argument("--report-runs", type=int, help="synthetic runs for the report")
    parser.add_argument("--moonshot-trials", type=int, help="no-op trials of the moonshot bound")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every in-process measure (default 1; 0: torch's default, the "
        "cores); workers get cores // workers each, as with `studylib sweep --workers`",
    )
    parser.add_argument("--cache-dir", type=Path, default=Settings().cache_dir)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default $OUT or bench/out)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "repeats": 5,
        "sweep_repeats": 3 if quick else 5,
        "tutorial_repeats": 1 if quick else 3,
        "epochs": QUICK_EPOCHS if quick else TRIAL_EPOCHS,
        "trials": 16 if quick else 64,
        "population": 8 if quick else 16,
        "report_runs": 200 if quick else 1000,
        "moonshot_trials": 200 if quick else 1000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.families = [f for f in args.families.split(",") if f]
    args.trial_epochs = [int(e) for e in args.trial_epochs.split(",") if e]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {unknown}; known: {list(FAMILIES)}")
    gpu = resolve_device(args.device).type == "cuda"
    sections = "trial,sweep,sampler,moonshot,report,leaks" + (
        ",knobs" if gpu else ""
    )  # knobs: see bench_knobs
    args.sections = set((args.sections or sections).split(","))
    cores = machine_cores()
    args.workers = (
        [int(w) for w in args.workers.split(",")] if args.workers else list(range(1, cores + 1))
    )
    return args


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(results, indent=2, default=str))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    # MLflow's telemetry depends on the network, not on the code measured (`make bench` also
    # sets it for the processes it starts).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database..."
    args = parse_args(argv)
    path = output_path(args.out)
    started = time.perf_counter()
    results = run(args, path)
    results["bench_seconds"] = time.perf_counter() - started
    save(results, path)
    print(table(results))
    print(f"\nwrote {path} ({results['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
