"""Synthetic ablation runs (a `load_runs` frame's columns) whose answers are known."""

from __future__ import annotations

import math

import pandas as pd

SEEDS = (0, 1, 2, 3, 4)
ES_PARAMS = {
    "train.early_stopping": "True",
    "model.dropout": 0.0,
    "train.l1": 0.0,
    "train.l2": 0.0,
    "train.weight_decay": 0.0,
}
OFF = {**ES_PARAMS, "train.early_stopping": "False"}


def run(arm: str, seed: int, **values) -> dict:
    params = ES_PARAMS if arm == "early_stopping" else OFF
    if arm == "dropout":
        params = {**OFF, "model.dropout": 0.3}
    return {
        "arm": arm,
        "seed": seed,
        "run_id": f"{arm}-{seed}",
        "status": "completed",
        "design": "d1",
        **params,
        **values,
    }


def arms_frame(columns: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """columns: metric -> arm -> one value per seed."""
    rows: dict[tuple[str, int], dict] = {}
    for column, per_arm in columns.items():
        for arm, values in per_arm.items():
            for seed, value in zip(SEEDS, values, strict=True):
                rows.setdefault((arm, seed), run(arm, seed))[column] = value
    return pd.DataFrame(list(rows.values()))


BASE_ACC = [0.47, 0.50, 0.44, 0.52, 0.48]
BASE_LOSS = [3.4, 3.1, 3.6, 3.3, 3.5]
NOISE = [0.004, -0.003, 0.001, -0.002, 0.000]


def shifted(values, by, noise=NOISE):
    return [v + by + e for v, e in zip(values, noise, strict=True)]


def known_study() -> pd.DataFrame:
    """Dropout helps on both metrics; early stopping lowers accuracy but lowers loss too (the
    default study's finding); L1's effect is noise; weight decay's test runs are missing."""
    return arms_frame(
        {
            "test_acc": {
                "baseline": BASE_ACC,
                "dropout": shifted(BASE_ACC, 0.05),
                "early_stopping": shifted(BASE_ACC, -0.05),
                "l1": shifted(BASE_ACC, 0.0, [0.03, -0.04, 0.02, -0.01, -0.02]),
                "weight_decay": [math.nan] * 5,
            },
            "test_loss": {
                "baseline": BASE_LOSS,
                "dropout": shifted(BASE_LOSS, -1.5),
                "early_stopping": shifted(BASE_LOSS, -1.9),
                "l1": shifted(BASE_LOSS, 0.0, [0.3, -0.2, 0.1, -0.3, 0.05]),
                "weight_decay": [math.nan] * 5,
            },
        }
    )
