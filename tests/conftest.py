"""Shared fixtures: tiny configs that run the whole pipeline on the CPU in seconds."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from studylib.config import Experiment, Settings

torch.set_num_threads(1)  # tiny models: threads cost more than they give, and CI has 2 cores

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"num_train": 600, "num_test": 200, "val_fraction": 0.25, "train_examples": 300},
    "model": {"arch": "mlp", "hidden": [32], "dropout": 0.0},
    "train": {"lr": 3e-3, "batch_size": 50, "max_epochs": 3, "patience": 2},
    "sweep": {
        "trials": 3,
        "pruner": {"enabled": False},
        "search": {
            "dropout": {"low": 0.0, "high": 0.5},
            "l1": {"low": 1e-6, "high": 1e-3, "log": True, "allow_zero": True},
            "l2": {"low": 1e-6, "high": 1e-2, "log": True, "allow_zero": True},
            "patience": {"low": 1, "high": 3},
        },
    },
}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture
def tiny() -> Experiment:
    return Experiment.model_validate(TINY)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made: creating them takes seconds per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    # Once a Tracker has switched this process's SQLite connections to WAL, the last migrations
    # may still sit in mlflow.db-wal: fold them in, so that copying mlflow.db copies them all.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def local_settings(root: Path, data_cache: Path) -> Settings:
    """Embedded defaults, every file under `root`."""
    return Settings(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        storage=str(root / "optuna.journal"),
        device="cpu",
        cache_dir=data_cache,
        artifact_root=root / "mlartifacts",
        progress=False,
    )


@pytest.fixture
def settings(tmp_path: Path, data_cache: Path, mlflow_template: Path) -> Settings:
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    return local_settings(tmp_path, data_cache)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_ABLATION = {
    **TINY,
    "ablation": {
        "seeds": [0, 1],
        "strength": {"dropout": 0.3, "l1": 1e-3, "weight_decay": 0.05, "patience": 1},
        "tune_trials": 2,
    },
}


@pytest.fixture
def tiny_ablation() -> Experiment:
    return Experiment.model_validate(TINY_ABLATION)


@pytest.fixture(scope="session")
def study_report(tmp_path_factory, data_cache, mlflow_template) -> Path:
    """A tiny sweep and ablation, reported once for every test that reads a report."""
    from studylib.report import write_report
    from studylib.sweep import run_sweep
    from studylib.sweep.ablation import run_ablation

    root = tmp_path_factory.mktemp("study")
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    settings = local_settings(root, data_cache)
    exp = Experiment.model_validate(TINY_ABLATION)
    run_sweep(exp, settings, trials=3)
    run_ablation(exp, settings)
    return write_report(settings.tracking_uri, ["tiny"], root / "report")
