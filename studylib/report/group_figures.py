"""Figures and tables of the groups whose claims compare members (report/contrasts.py).

Inputs are `load_runs` frames (one row per run; member = the study name without the group
prefix) and `load_curves` frames. Each function returns a caption saying what it shows and from
how many runs, or None when the runs it needs are not there.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from studylib.report.contrasts import FIRST_LAYER  # noqa: E402
from studylib.report.stats import mean_ci  # noqa: E402

DPI = 110


def member_runs(runs: pd.DataFrame, group: str) -> pd.DataFrame:
    """The group's finished baseline-arm runs, with a `member` column."""
    mine = runs[runs["experiment"].str.startswith(f"{group}-")].copy()
    mine["member"] = mine["experiment"].str.removeprefix(f"{group}-")
    return mine


def member_table(runs: pd.DataFrame, group: str) -> pd.DataFrame:
    """Per member and arm: seeds, test accuracy and, where logged, tokens per word and OOV;
    for spelling also the test loss per character and the exact match of copying the input."""
    rows = []
    for (member, arm), mine in member_runs(runs, group).groupby(["member", "arm"], sort=False):
        row = {"member": member, "arm": arm, "seeds": len(mine)}
        row["test acc"] = str(mean_ci(mine["test_acc"]))
        spelling = "copy_acc/test" in mine and mine["copy_acc/test"].notna().any()
        extra = ("test_loss", "copy_acc/test") if spelling else ()
        for column in (*extra, "tokens_per_word/val", "oov_rate/test", "train_seconds"):
            if column in mine and mine[column].notna().any():
                row[column] = str(mean_ci(mine[column]))
        rows.append(row)
    return pd.DataFrame(rows)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def state_grad_profile(runs: pd.DataFrame, group: str, path: Path) -> str | None:
    """||dL/dh_t|| against t per cell, before training and for the kept weights."""
    mine = member_runs(runs, group)
    panels = []
    for when in ("init", "kept"):
        keys = sorted(
            (c for c in mine.columns if re.fullmatch(rf"state_grad/{when}/t\d+", c)),
            key=lambda c: int(c.rsplit("t", 1)[1]),
        )
        if keys:
            panels.append((when, keys))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    n = 0
    for ax, (when, keys) in zip(axes[0], panels, strict=True):
        steps = [int(k.rsplit("t", 1)[1]) for k in keys]
        for member, runs_of in mine.groupby("member"):
            values = runs_of[keys].to_numpy(dtype=float)
            values = values[~np.isnan(values).any(axis=1)]
            if not len(values):
                continue
            n += len(values) if when == "init" else 0
            logs = np.log10(np.clip(values, 1e-30, None))
            ax.plot(steps, 10 ** logs.mean(axis=0), label=f"{member} ({len(values)} seeds)")
            ax.fill_between(steps, 10 ** logs.min(axis=0), 10 ** logs.max(axis=0), alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step t")
        ax.set_ylabel("||dL/dh_t||")
        ax.set_title("before training" if when == "init" else "kept weights (after training)")
        ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "The norm of the loss's gradient with respect to the state after each step, "
        "||dL/dh_t||, on a fixed batch of 100 training examples, before training (left) and for "
        "the kept weights (right): geometric mean over seeds, band from the smallest to the "
        f"largest seed, log scale. From {n} runs. A line that falls to the left is a gradient "
        "that vanishes on its way back to the early steps."
    )


def clipping(runs: pd.DataFrame, curves: pd.DataFrame, group: str, path: Path) -> str | None:
    """Global gradient norm per epoch (before clipping) of the tanh RNN with and without."""
    mine = member_runs(runs, group)
    mine = mine[mine["member"].isin(["rnn", "rnn_clip"])]
    total = curves[(curves["key"] == "grad_norm/total") & curves["run_id"].isin(mine["run_id"])]
    if total.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for member, runs_of in mine.groupby("member"):
        series = total[total["run_id"].isin(runs_of["run_id"])]
        if series.empty:
            continue
        clip = runs_of["train.grad_clip"].iloc[0] if "train.grad_clip" in runs_of else "?"
        acc = mean_ci(runs_of["test_acc"])
        for i, (_, one) in enumerate(series.groupby("run_id")):
            ax.plot(
                one["epoch"],
                one["value"],
                color="tab:red" if member == "rnn" else "tab:blue",
                alpha=0.6,
                label=f"{member} (clip {clip}; test acc {acc.mean:.3f})" if i == 0 else None,
            )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("global grad norm, before clipping")
    ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "The global gradient norm of the plain tanh RNN per epoch (mean over the epoch's "
        "batches, measured before clipping), without clipping and with the norm clipped to 1; "
        f"one line per seed, log scale. From {mine['run_id'].nunique()} runs. Clipping bounds "
        "the step, not the gradient: the clipped run's norm is what it would have been."
    )


def depth_figure(runs: pd.DataFrame, curves: pd.DataFrame, group: str, path: Path) -> str | None:
    """First-layer gradient norm (epoch 1) and test accuracy against depth per block type."""
    mine = member_runs(runs, group)
    parsed = mine["member"].str.extract(r"^([a-z]+)(\d+)$")
    mine = mine.assign(kind=parsed[0], depth=pd.to_numeric(parsed[1]))
    mine = mine.dropna(subset=["kind"])
    first = curves[(curves["key"] == FIRST_LAYER) & (curves["epoch"] == 1)]
    grad = dict(zip(first["run_id"], first["value"], strict=True))
    mine = mine.assign(first_grad=mine["run_id"].map(grad))
    if mine.empty or mine["first_grad"].isna().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for kind, of_kind in mine.groupby("kind"):
        depths = sorted(of_kind["depth"].unique())
        for ax, column, log in ((axes[0], "first_grad", True), (axes[1], "test_acc", False)):
            means, lows, highs = [], [], []
            for d in depths:
                values = of_kind.loc[of_kind["depth"] == d, column].dropna()
                values = np.log10(values) if log else values
                est = mean_ci(list(values))
                means.append(est.mean)
                lows.append(est.low if not math.isnan(est.low) else est.mean)
                highs.append(est.high if not math.isnan(est.high) else est.mean)
            if log:
                means, lows, highs = (list(10 ** np.array(v)) for v in (means, lows, highs))
            ax.errorbar(
                depths,
                means,
                yerr=[np.subtract(means, lows), np.subtract(highs, means)],
                marker="o",
                capsize=3,
                label=kind,
            )
    axes[0].set_yscale("log")
    axes[0].set_ylabel("first-layer gradient norm, epoch 1")
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xlabel("layers after the stem")
        ax.set_xticks(sorted(mine["depth"].unique()))
        ax.legend()
    _save(fig, path)
    return (
        "Left: the first convolution's gradient norm (mean over the first epoch's batches) "
        "against depth, per block type, geometric mean and 95% t-interval over seeds, log "
        "scale. Right: test accuracy of the last epoch against depth, mean and 95% t-interval. "
        f"From {len(mine)} runs."
    )
