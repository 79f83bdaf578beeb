"""Figures of the report: each function draws one PNG from tidy frames and returns its caption.

Inputs are `studylib.results` frames: `runs` (one row per run) and `curves` (run_id, key,
epoch, value). Every caption says what the figure shows and from how many runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never an interactive backend in a worker

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from studylib.config import ARMS, SEARCHABLE  # noqa: E402
from studylib.report.stats import mean_ci  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def best_vs_baseline(curves: pd.DataFrame, baseline, best, path: Path) -> str:
    """Train and validation loss of the sweep's baseline beside its best trial."""
    _theme()
    panels = [
        (run, title)
        for run, title in (
            (baseline, "baseline (no regularization)"),
            (best, f"best trial {best['trial']}" if best is not None else ""),
        )
        if run is not None
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4), sharey=True, squeeze=False
    )
    for ax, (run, title) in zip(axes[0], panels, strict=True):
        mine = curves[curves["run_id"] == run["run_id"]]
        for key, color in (("train/loss", "tab:blue"), ("val/loss", "tab:orange")):
            series = mine[mine["key"] == key]
            ax.plot(series["epoch"], series["value"], label=key, color=color)
        kept = int(run["selected_epoch"])
        ax.axvline(kept, color="black", linestyle="--", linewidth=1, label=f"kept epoch {kept}")
        if run["status"] == "early_stopped":
            stopped = int(run["stopped_epoch"])
            ax.axvline(
                stopped, color="grey", linestyle=":", linewidth=1, label=f"stopped {stopped}"
            )
        ax.set_title(f"{title}\ntest acc {run['test_acc']:.3f}, gap {run['gap_loss']:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "Train and validation loss per epoch (both in eval mode over the whole split) of the "
        "unregularized baseline and of the sweep trial with the lowest validation loss; the "
        f"dashed line marks the epoch whose weights were kept and scored on test. From "
        f"{len(panels)} runs."
    )


def loss_vs_hyperparameters(trials: pd.DataFrame, search: dict, path: Path) -> str:
    """Validation loss of each finished trial against each swept hyperparameter."""
    _theme()
    names = [n for n in SEARCHABLE if n in search]
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.6), sharey=True, squeeze=False
    )
    base = trials[trials["baseline"]]
    others = trials[~trials["baseline"]]
    for ax, name in zip(axes[0], names, strict=False):
        x = others[SEARCHABLE[name]].astype(float)
        y = others["selected_val_loss"]
        if search[name].get("log"):
            # Zeros ("off") cannot sit on a log axis: draw them one decade below the range.
            ax.set_xscale("log")
            on = x > 0
            ax.scatter(x[on], y[on], s=22, alpha=0.8)
            if (~on).any():
                ax.scatter(
                    [search[name]["low"] / 10] * int((~on).sum()),
                    y[~on],
                    s=22,
                    marker="x",
                    color="tab:red",
                    label="off (0)",
                )
        else:
            ax.scatter(x, y, s=22, alpha=0.8)
        if not base.empty:
            ax.axhline(
                base["selected_val_loss"].iloc[0],
                color="black",
                linestyle="--",
                linewidth=1,
                label="baseline",
            )
        ax.legend(fontsize=8)
        ax.set_xlabel(SEARCHABLE[name])
    axes[0][0].set_ylabel("val loss of kept weights (log)")
    axes[0][0].set_yscale("log")
    _save(fig, path)
    return (
        "Validation loss of the kept weights of each finished sweep trial against each swept "
        "hyperparameter; the dashed line is the unregularized baseline, crosses mark a "
        f"regularizer switched off. From {len(trials)} finished runs (pruned and failed trials "
        "have no final value)."
    )


def dropout_l2_heatmap(trials: pd.DataFrame, search: dict, path: Path) -> str | None:
    """Mean validation loss over a grid of dropout x L2 strength (sweep trials)."""
    if not {"dropout", "l2"} <= set(search) or len(trials) < 4:
        return None
    _theme()
    frame = trials[~trials["baseline"]].copy()
    d_spec, l_spec = search["dropout"], search["l2"]
    d_edges = np.linspace(d_spec["low"], d_spec["high"], 5)
    frame["dropout bin"] = pd.cut(
        frame["model.dropout"].astype(float), d_edges, include_lowest=True
    ).astype(str)
    l2 = frame["train.l2"].astype(float)
    if l_spec.get("log"):
        l_edges = np.logspace(math.log10(l_spec["low"]), math.log10(l_spec["high"]), 5)
    else:
        l_edges = np.linspace(l_spec["low"], l_spec["high"], 5)
    labels = pd.cut(l2, l_edges, include_lowest=True).astype(str)
    frame["L2 bin"] = labels.where(l2 > 0, "off (0)")
    grid = frame.pivot_table(
        index="L2 bin", columns="dropout bin", values="selected_val_loss", aggfunc="mean"
    )
    counts = frame.pivot_table(
        index="L2 bin", columns="dropout bin", values="selected_val_loss", aggfunc="count"
    )
    annot = grid.round(3).astype(str) + "\n(n=" + counts.fillna(0).astype(int).astype(str) + ")"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.heatmap(
        grid,
        annot=annot.where(grid.notna(), ""),
        fmt="",
        cmap="viridis_r",
        ax=ax,
        cbar_kws={"label": "mean val loss"},
    )
    ax.set_xlabel("dropout")
    ax.set_ylabel("L2 strength")
    _save(fig, path)
    return (
        "Mean validation loss of the kept weights over a grid of dropout rate x L2 penalty "
        f"strength, from {len(frame)} finished sweep trials (n per cell in brackets; empty "
        "cells were not sampled)."
    )


def importance_bars(importances: dict[str, float], n_trials: int, path: Path) -> str:
    _theme()
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(importances) + 1.2))
    names = list(importances)
    ax.barh(names[::-1], [importances[n] for n in names][::-1], color="tab:purple")
    ax.set_xlabel("fANOVA importance (share of explained variance)")
    _save(fig, path)
    return (
        "Hyperparameter importance by Optuna's fANOVA evaluator over the sweep's Optuna "
        f"parameters (switches `*_on` included), from {n_trials} completed trials."
    )


def stop_vs_patience(trials: pd.DataFrame, path: Path) -> str | None:
    es = trials[trials["train.early_stopping"].astype(str) == "True"]
    if es.empty or es["train.patience"].nunique() < 2:
        return None
    _theme()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(es["train.patience"], es["stopped_epoch"], label="stopped epoch", s=24)
    ax.scatter(es["train.patience"], es["best_epoch"], label="best (kept) epoch", s=24, marker="x")
    ax.set_xlabel("patience (epochs)")
    ax.set_ylabel("epoch")
    ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "Epoch at which early stopping ended each trial, and the epoch it kept, against the "
        f"trial's patience; from {len(es)} finished sweep trials with early stopping."
    )


def arm_curves(arms: pd.DataFrame, curves: pd.DataFrame, path: Path) -> str:
    """Mean train and validation loss over seeds per ablation arm, band = min..max."""
    _theme()
    present = [a for a in ARMS if a in set(arms["arm"])]
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True, squeeze=False
    )
    for ax, arm in zip(axes.flat, present, strict=False):
        ids = arms.loc[arms["arm"] == arm, "run_id"]
        mine = curves[curves["run_id"].isin(ids)]
        for key, color in (("train/loss", "tab:blue"), ("val/loss", "tab:orange")):
            stats = mine[mine["key"] == key].groupby("epoch")["value"].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=color, label=key)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
        ax.set_title(f"{arm} (n={len(ids)})", fontsize=10)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("cross-entropy")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    return (
        "Train and validation loss per epoch for each ablation arm: the line is the mean over "
        "seeds, the band spans the lowest to the highest seed (arms with early stopping end "
        f"early). From {len(arms)} runs."
    )


def gap_by_arm(arms: pd.DataFrame, path: Path) -> tuple[str, pd.DataFrame]:
    """Generalization gap at the best epoch per arm, mean with a 95% t-interval over seeds."""
    _theme()
    present = [a for a in ARMS if a in set(arms["arm"])]
    rows = []
    for arm in present:
        est = mean_ci(arms.loc[arms["arm"] == arm, "best_gap_loss"].dropna())
        rows.append({"arm": arm, "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    table = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    err = np.array([table["mean"] - table["low"], table["high"] - table["mean"]])
    ax.errorbar(table["arm"], table["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=5)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("val loss - train loss at best epoch")
    ax.tick_params(axis="x", rotation=20)
    _save(fig, path)
    caption = (
        "Generalization gap (validation minus training loss, both in eval mode) at each run's "
        f"best validation epoch, per ablation arm: mean and 95% t-interval over seeds. From "
        f"{int(table['n'].sum())} runs."
    )
    return caption, table


def weights_over_epochs(arms: pd.DataFrame, curves: pd.DataFrame, path: Path) -> str | None:
    """Sparsity and L2 norm of the weights over epochs: L1 against L2 (and weight decay)."""
    shown = [a for a in ("baseline", "l1", "l2", "weight_decay") if a in set(arms["arm"])]
    if not {"l1", "l2"} <= set(shown):
        return None
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for arm in shown:
        ids = arms.loc[arms["arm"] == arm, "run_id"]
        mine = curves[curves["run_id"].isin(ids)]
        for ax, key in zip(axes, ("weights/sparsity", "weights/l2_norm"), strict=True):
            mean = mine[mine["key"] == key].groupby("epoch")["value"].mean()
            ax.plot(mean.index, mean.values, label=f"{arm} (n={len(ids)})")
    axes[0].set_ylabel("share of weights with |w| < 1e-3")
    axes[1].set_ylabel("global L2 norm of the weights")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    _save(fig, path)
    n = int(arms["arm"].isin(shown).sum())
    return (
        "Weight sparsity (left) and global L2 norm (right) over epochs, mean over seeds, for the "
        f"L1, L2 and weight-decay arms against the baseline. From {n} runs."
    )


def family_curves(best_runs: pd.DataFrame, curves: pd.DataFrame, path: Path) -> str:
    """Small multiples, one per architecture: best regularized run against its baseline."""
    _theme()
    archs = list(dict.fromkeys(best_runs["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.5), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for _, run in best_runs[best_runs["arch"] == arch].iterrows():
            mine = curves[curves["run_id"] == run["run_id"]]
            style = "--" if run["which"] == "baseline" else "-"
            for key, color in (("train/loss", "tab:blue"), ("val/loss", "tab:orange")):
                series = mine[mine["key"] == key]
                ax.plot(
                    series["epoch"],
                    series["value"],
                    style,
                    color=color,
                    label=f"{run['which']} {key}",
                )
        ax.set_title(arch)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("cross-entropy (log)")
    axes[0][0].legend(fontsize=7)
    _save(fig, path)
    return (
        "Per architecture: train and validation loss of the best regularized run (solid) "
        f"against its unregularized baseline (dashed). From {len(best_runs)} runs."
    )


def family_test_accuracy(groups, path: Path) -> str:
    """Per architecture: test accuracy of the baseline against the best trial (sweeps)."""
    _theme()
    rows = []
    for (experiment, arch), group in groups:
        trials = group[group["role"] == "trial"]
        if trials.empty:
            continue
        best = trials.loc[trials["selected_val_loss"].idxmin()]
        rows.append(
            {"family": f"{arch}\n({experiment})", "run": "best trial", "test acc": best["test_acc"]}
        )
        for value in trials.loc[trials["baseline"], "test_acc"]:
            rows.append({"family": f"{arch}\n({experiment})", "run": "baseline", "test acc": value})
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * frame["family"].nunique()), 3.8))
    sns.barplot(
        frame, x="family", y="test acc", hue="run", hue_order=["baseline", "best trial"], ax=ax
    )
    ax.set_xlabel("")
    ax.set_ylim(0, 1)
    _save(fig, path)
    return (
        "Test accuracy per architecture: the unregularized baseline trial against the sweep trial "
        f"with the lowest validation loss. From {len(frame)} runs."
    )


def tokenizer_label(runs: pd.DataFrame) -> pd.Categorical:
    """ "char", "bpe 1000" (BPE with its vocabulary size knob), "word": finest units first."""
    kind = runs["data.tokenizer"].astype(str)
    size = pd.to_numeric(runs["data.vocab_size"], errors="coerce").fillna(0).astype(int)
    label = kind.where(kind != "bpe", "bpe " + size.astype(str))
    rank = {"char": 0, "bpe": 1, "word": 2}
    pairs = sorted(
        set(zip(kind, size, label, strict=True)), key=lambda p: (rank.get(p[0], 3), p[1])
    )
    order = list(dict.fromkeys(p[2] for p in pairs))
    return pd.Categorical(label, categories=order, ordered=True)


def oov_by_tokenizer(runs: pd.DataFrame, path: Path) -> tuple[str, pd.DataFrame]:
    """OOV rate of validation and test per tokenizer, and test accuracy per tokenizer and
    model: what sub-words buy over words. `runs` need `data.tokenizer`, `data.vocab_size`,
    `vocab_size`, `oov_rate/val`, `oov_rate/test`, `test_acc`, `arch`, `dataset`."""
    _theme()
    frame = runs.assign(
        tokenizer=tokenizer_label(runs), model=runs["arch"] + " (" + runs["dataset"] + ")"
    )
    table = (
        frame.groupby(["tokenizer", "model"], observed=True)
        .agg(
            runs=("test_acc", "size"),
            vocab=("vocab_size", "mean"),
            oov_val=("oov_rate/val", "mean"),
            oov_test=("oov_rate/test", "mean"),
            test_acc=("test_acc", "mean"),
        )
        .reset_index()
    )
    oov = frame.melt(
        id_vars=["tokenizer"], value_vars=["oov_rate/val", "oov_rate/test"], var_name="split"
    )
    oov["split"] = oov["split"].str.removeprefix("oov_rate/")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.barplot(oov, x="tokenizer", y="value", hue="split", errorbar=None, ax=axes[0])
    for bars in axes[0].containers:
        axes[0].bar_label(bars, fmt="%.2g", fontsize=7)  # rates near 0 would not show
    axes[0].set_ylabel("OOV rate (share of <unk> tokens)")
    axes[0].set_ylim(0, 1.05)
    sns.barplot(frame, x="tokenizer", y="test_acc", hue="model", errorbar=None, ax=axes[1])
    axes[1].set_ylabel("test accuracy, mean over runs")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("tokenizer (fitted on the training words)")
        ax.legend(fontsize=8)
    _save(fig, path)
    caption = (
        "Left: out-of-vocabulary rate of the validation and test words under each tokenizer, "
        "the share of their tokens mapped to <unk> (splits are disjoint by word, so under word "
        "tokens every held-out word is unknown). Right: test accuracy (spelling: exact match) "
        f"per tokenizer and model, mean over runs. From {len(frame)} finished runs that logged "
        "OOV rates."
    )
    return caption, table


VERDICT_COLORS = {
    "supported": "tab:green",
    "contradicted": "tab:red",
    "inconclusive": "tab:gray",
}


def summary_differences(rows: pd.DataFrame, path: Path) -> str:
    """Each arm minus the baseline, test accuracy and test loss, coloured by verdict (a
    `StudySummary.rows` frame)."""
    _theme()
    measured = rows[rows["n"] > 0].iloc[::-1]  # first arm on top
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(measured), 2) + 1.6), sharey=True)
    for ax, prefix, label in (
        (axes[0], "acc", "test accuracy, arm minus baseline"),
        (axes[1], "loss", "test loss, arm minus baseline"),
    ):
        for y, (_, row) in enumerate(measured.iterrows()):
            mean, low, high = row[f"{prefix}_diff"], row[f"{prefix}_low"], row[f"{prefix}_high"]
            color = VERDICT_COLORS.get(row[f"{prefix}_verdict"], "tab:gray")
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar(mean, y, xerr=err, fmt="o", color=color, capsize=4)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(label)
    axes[0].set_yticks(range(len(measured)), list(measured["arm"]))
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=c, label=v)
        for v, c in VERDICT_COLORS.items()
    ]
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    _save(fig, path)
    n = int(measured["n"].max()) if not measured.empty else 0
    return (
        "Test accuracy (left) and test loss (right) of each ablation arm minus the baseline's, "
        f"paired by seed: mean and unadjusted 95% t-interval over {n} seeds. Colour: the "
        "verdict, from a paired t-test Holm-adjusted within its family (accuracy: supported = "
        "higher than the baseline; loss: supported = lower); grey: inconclusive. From "
        f"{int(2 * measured['n'].sum())} paired runs."
    )
