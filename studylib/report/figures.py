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

DPI = 150  # the page shows figures at about their pixel width: below 150 dpi text blurs

# One colour per arm in every figure (the summary's tick labels, gap, weights, arm panels).
# The baseline is near-black: it is the reference every other line is read against.
ARM_COLORS = dict(
    zip(
        ARMS,
        ("#222222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"),
        strict=True,
    )
)


def arm_color(arm: str) -> str:
    return ARM_COLORS.get(arm, "#555555")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def _name(run, role: str) -> str:
    """ "best: trial 27: dropout 0.10, l2 7.9e-3" (its MLflow run name), or "best: trial 27"."""
    if run is None:
        return ""
    name = run.get("tag:mlflow.runName")
    return f"{role}: {name if isinstance(name, str) and name else 'trial ' + str(run['trial'])}"


def best_vs_baseline(curves: pd.DataFrame, baseline, best, path: Path) -> str:
    """Train and validation loss of the sweep's baseline beside its best trial."""
    _theme()
    panels = [
        (run, title)
        for run, title in (
            (baseline, "baseline (no regularization)"),
            (best, _name(best, "best")),
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


OFF_GAP = 0.8  # how far left of a log range's low end (in decades) the "off" slot sits


def hparam_positions(values: pd.Series, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """x positions of one hyperparameter's values and which of them are "off": a log range
    is drawn in log10 units (ticks say the value), its zeros at an explicit "off" slot left of
    the range (a gap and a rule between them), never at a made-up small number."""
    x = values.astype(float).to_numpy()
    if not spec.get("log"):
        return x, np.zeros(len(x), dtype=bool)
    off = x <= 0
    positions = np.where(
        off, math.log10(float(spec["low"])) - OFF_GAP, np.log10(np.where(off, 1, x))
    )
    return positions, off


def _log_ticks(ax, spec: dict, with_off: bool) -> None:
    low, high = math.log10(float(spec["low"])), math.log10(float(spec["high"]))
    decades = list(range(math.ceil(low - 1e-9), math.floor(high + 1e-9) + 1))
    ticks = [float(d) for d in decades] or [low, high]
    labels = [f"1e{int(t)}" if float(t).is_integer() else f"{10**t:.1g}" for t in ticks]
    if with_off:
        ticks, labels = [low - OFF_GAP, *ticks], ["off", *labels]
        ax.axvline(low - OFF_GAP / 2, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(ticks, labels)
    ax.set_xlim((low - OFF_GAP - 0.3) if with_off else low - 0.2, high + 0.2)


def run_curves(curves: pd.DataFrame, title: str, path: Path) -> None:
    """One run's train and validation loss (and accuracy, where logged) on one figure: the
    `curves.png` a run carries in MLflow, where its metrics tab draws each key apart."""
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (kind, label) in zip(
        axes, (("loss", "cross-entropy"), ("acc", "accuracy")), strict=True
    ):
        for split, color in (("train", "#1f77b4"), ("val", "#ff7f0e")):
            series = curves[curves["key"] == f"{split}/{kind}"]
            if not series.empty:
                ax.plot(series["epoch"], series["value"], color=color, label=f"{split}/{kind}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def loss_vs_hyperparameters(trials: pd.DataFrame, search: dict, path: Path) -> str:
    """Validation loss of each finished trial against each swept hyperparameter."""
    _theme()
    names = [n for n in SEARCHABLE if n in search]
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.8), sharey=True, squeeze=False
    )
    base = trials[trials["baseline"]]
    others = trials[~trials["baseline"]]
    y = others["selected_val_loss"].to_numpy()
    for ax, name in zip(axes[0], names, strict=False):
        spec = search[name]
        x, off = hparam_positions(others[SEARCHABLE[name]], spec)
        ax.scatter(x[~off], y[~off], s=24, alpha=0.8, color="#1f77b4", label="trial")
        if off.any():
            ax.scatter(x[off], y[off], s=30, marker="x", color="#d62728", label="switched off")
        if spec.get("log"):
            _log_ticks(ax, spec, with_off=bool(off.any()))
        ax.set_xlabel(SEARCHABLE[name] + (" (log scale)" if spec.get("log") else ""))
    # The y axis fits the sweep's trials: the baseline, often far worse, is drawn when it
    # falls inside and otherwise named at the edge it lies beyond (a log axis stretched to
    # reach it squashed every trial into a sliver).
    if len(y):
        low, high = float(np.nanmin(y)), float(np.nanmax(y))
        pad = 0.08 * (high - low) or 0.05 * abs(high) or 0.1
        axes[0][0].set_ylim(low - pad, high + pad)
    if not base.empty:
        value = float(base["selected_val_loss"].iloc[0])
        for ax in axes[0][: len(names)]:
            bottom, top = ax.get_ylim()
            if bottom <= value <= top:
                ax.axhline(
                    value,
                    color=arm_color("baseline"),
                    linestyle="--",
                    linewidth=1.2,
                    label=f"baseline {value:.3g}",
                )
            else:
                ax.annotate(
                    f"baseline {value:.3g} {'above' if value > top else 'below'}",
                    xy=(0.02, 0.97 if value > top else 0.03),
                    xycoords="axes fraction",
                    va="top" if value > top else "bottom",
                    fontsize=8,
                    color=arm_color("baseline"),
                )
    for ax in axes[0][: len(names)]:
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("val loss of kept weights")
    _save(fig, path)
    return (
        "Validation loss of the kept weights of each finished sweep trial against each swept "
        "hyperparameter; log-scaled ranges are drawn on a log axis with a separate 'off' slot "
        "(crosses: that regularizer switched off). The y axis fits the trials; the "
        "unregularized baseline is the dashed line, or named at the edge when it lies beyond. "
        f"From {len(trials)} finished runs (pruned and failed trials have no final value)."
    )


def _edge(value: float, log: bool) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if log else f"{value:.2g}"


def bin_labels(values: pd.Series, spec: dict, n_bins: int = 4) -> pd.Categorical:
    """Each value's bin of the search range, as an ordered categorical with readable labels
    ("1e-5 to 1e-4"), lowest first; 0 in a range with `allow_zero` gets its own first bin,
    "off". Edges are the range's own: no bin reaches below its low end (pd.cut's
    `include_lowest` would move the first edge below it, to -0.000999 for a range from 0)."""
    low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log"))
    if log:
        edges = np.logspace(math.log10(low), math.log10(high), n_bins + 1)
    else:
        edges = np.linspace(low, high, n_bins + 1)
    labels = [
        f"{_edge(a, log)} to {_edge(b, log)}" for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    values = values.astype(float).to_numpy()
    # (a, b] bins with the first one closed on the left: searchsorted on the inner edges.
    index = np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)
    named = np.array(labels, dtype=object)[index]
    off = (values == 0) & (log or low > 0)  # a range from 0 holds 0 as an ordinary value
    named[off] = "off (0)"
    categories = (["off (0)"] if off.any() else []) + labels
    return pd.Categorical(named, categories=categories, ordered=True)


def heatmap_grid(trials: pd.DataFrame, search: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean validation loss and trial count per (L2 bin, dropout bin) of the sweep's trials
    (the baseline left out): rows L2 from off to strongest, columns dropout from low to high,
    every bin of the range present (empty ones NaN / 0)."""
    frame = trials[~trials["baseline"]]
    binned = pd.DataFrame(
        {
            "L2": bin_labels(frame["train.l2"], search["l2"]),
            "dropout": bin_labels(frame["model.dropout"], search["dropout"]),
            "loss": frame["selected_val_loss"].to_numpy(),
        }
    )
    grouped = binned.groupby(["L2", "dropout"], observed=False)["loss"]
    grid = grouped.mean().unstack("dropout")
    counts = grouped.count().unstack("dropout").fillna(0).astype(int)
    return grid, counts


def dropout_l2_heatmap(trials: pd.DataFrame, search: dict, path: Path) -> str | None:
    """Mean validation loss over a grid of dropout x L2 strength (sweep trials)."""
    if not {"dropout", "l2"} <= set(search) or (~trials["baseline"]).sum() < 4:
        return None
    _theme()
    grid, counts = heatmap_grid(trials, search)
    annot = grid.map(lambda v: "" if math.isnan(v) else f"{v:.3g}") + counts.map(
        lambda n: f"\n(n={n})" if n else ""
    )
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(grid) + 2.2))
    sns.heatmap(
        grid.astype(float),
        annot=annot,
        fmt="",
        cmap="viridis_r",
        ax=ax,
        cbar_kws={"label": "mean val loss (lower is better)"},
    )
    ax.set_xlabel("dropout rate")
    ax.set_ylabel("L2 penalty strength")
    ax.tick_params(axis="y", rotation=0)
    _save(fig, path)
    return (
        "Mean validation loss of the kept weights over a grid of dropout rate x L2 penalty "
        f"strength, from {int(counts.to_numpy().sum())} finished sweep trials (the baseline left "
        "out; n per cell in brackets; blank cells were not sampled). Rows run from L2 off down "
        "to the strongest penalty; bins split the search range evenly (on a log scale for L2)."
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
    """Epochs each early-stopping trial trained against its patience, and whether early
    stopping ended it or `max_epochs` did: what patience changed. (Stopped minus kept epoch
    equals patience by construction, so that difference is not drawn.)"""
    es = trials[trials["train.early_stopping"].astype(str) == "True"]
    if es.empty or es["train.patience"].nunique() < 2:
        return None
    _theme()
    limit = pd.to_numeric(es["train.max_epochs"], errors="coerce")
    stopped = es["stopped_epoch"] < limit
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mask, label, marker, color in (
        (stopped, "stopped early", "o", "#1f77b4"),
        (~stopped, "ran to max_epochs", "s", "#d62728"),
    ):
        if mask.any():
            ax.scatter(
                es.loc[mask, "train.patience"],
                es.loc[mask, "stopped_epoch"],
                s=28,
                marker=marker,
                color=color,
                label=f"{label} ({int(mask.sum())})",
            )
    if limit.notna().any():
        ax.axhline(limit.max(), color="grey", linestyle="--", linewidth=1, label="max_epochs")
    ax.set_xlabel("patience (epochs)")
    ax.set_ylabel("epochs trained")
    ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "Epochs each sweep trial with early stopping trained against its patience: "
        f"{int(stopped.sum())} of {len(es)} were stopped early, {int((~stopped).sum())} ran to "
        "max_epochs (there patience never acted). The kept epoch is always the stop minus the "
        "patience, so it is not drawn."
    )


def arm_curves_figure(arms: pd.DataFrame, curves: pd.DataFrame):
    """The figure of `arm_curves`, returned open (tests read its axes back)."""
    _theme()
    present = [a for a in ARMS if a in set(arms["arm"])]
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    # sharex: every panel spans the longest run, so an arm that stopped early looks short.
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.8 * cols, 3.1 * rows), sharex=True, sharey=True, squeeze=False
    )
    baseline_val = None
    for ax, arm in zip(axes.flat, present, strict=False):
        ids = arms.loc[arms["arm"] == arm, "run_id"]
        mine = curves[curves["run_id"].isin(ids)]
        color = arm_color(arm)
        for key, style in (("train/loss", "--"), ("val/loss", "-")):
            per_epoch = mine[mine["key"] == key].groupby("epoch")["value"]
            stats = per_epoch.agg(["mean", "min", "max", "count"])
            # The mean only where every seed still has a value: past a seed's stop, a mean over
            # the survivors is a different population. The band goes on to where seeds stop.
            full = stats[stats["count"] == len(ids)]
            ax.plot(full.index, full["mean"], style, color=color, label=f"{key} (mean)")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.18)
            if key == "val/loss" and arm == "baseline":
                baseline_val = full["mean"]
        ax.set_title(f"{arm} (n={len(ids)} seeds)", fontsize=10, color=color)
        ax.set_xlabel("epoch")
    if baseline_val is not None:  # the baseline's validation mean overlaid for reference
        for ax, arm in zip(axes.flat, present, strict=False):
            if arm != "baseline":
                ax.plot(
                    baseline_val.index,
                    baseline_val.values,
                    ":",
                    color=arm_color("baseline"),
                    linewidth=1,
                    label="baseline val/loss",
                )
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("cross-entropy")
    handles = [
        plt.Line2D([], [], linestyle="--", color="grey", label="train/loss (mean)"),
        plt.Line2D([], [], linestyle="-", color="grey", label="val/loss (mean)"),
        plt.Line2D([], [], linestyle=":", color=arm_color("baseline"), label="baseline val/loss"),
    ]
    axes[0][0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return fig


def arm_curves(arms: pd.DataFrame, curves: pd.DataFrame, path: Path) -> tuple[str, list]:
    """Mean train and validation loss over seeds per ablation arm, band = min..max; the
    caption and each drawn panel's x-limits (the page records them, its test reads them)."""
    fig = arm_curves_figure(arms, curves)
    xlims = [tuple(round(v, 3) for v in ax.get_xlim()) for ax in fig.axes if ax.axison]
    _save(fig, path)
    return _arm_curves_caption(len(arms)), xlims


def _arm_curves_caption(n: int) -> str:
    return (
        "Train (dashed) and validation (solid) loss per epoch for each ablation arm, in the "
        "arm's colour; panels share both axes. The line is the mean over seeds, drawn only "
        "over the epochs every seed reached; the band spans the lowest to the highest seed up "
        "to where the last seed stopped (arms with early stopping end early). Dotted: the "
        f"baseline's validation mean. From {n} runs."
    )


def gap_by_arm(arms: pd.DataFrame, path: Path) -> tuple[str, pd.DataFrame]:
    """Generalization gap at the kept epoch per arm, mean with a 95% t-interval over seeds:
    the same `gap_loss` the dropout claim tests (claims.py), at the weights that were scored."""
    _theme()
    present = [a for a in ARMS if a in set(arms["arm"])]
    rows = []
    for arm in present:
        est = mean_ci(arms.loc[arms["arm"] == arm, "gap_loss"].dropna())
        rows.append({"arm": arm, "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    table = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    err = np.array([table["mean"] - table["low"], table["high"] - table["mean"]])
    for x, (arm, (_, row)) in enumerate(zip(table["arm"], table.iterrows(), strict=True)):
        ax.errorbar(
            x,
            row["mean"],
            yerr=np.nan_to_num(err[:, x : x + 1]),
            fmt="o",
            capsize=5,
            color=arm_color(arm),
        )
    ax.set_xticks(range(len(table)), list(table["arm"]))
    for label in ax.get_xticklabels():
        label.set_color(arm_color(label.get_text()))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("val loss - train loss at kept epoch")
    ax.tick_params(axis="x", rotation=20)
    _save(fig, path)
    caption = (
        "Generalization gap (validation minus training loss, both in eval mode) at each run's "
        f"kept epoch (the weights scored on test; the dropout claim tests this gap), per ablation arm: mean and 95% t-interval over seeds. From "
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
    # Lines that coincide (the baseline and a weak weight decay) stay visible: each arm its
    # own colour, dash and marker, the baseline drawn last and thinnest, on top.
    styles = {
        "baseline": (":", "", 1.6, 3),
        "l1": ("-", "o", 2, 2),
        "l2": ("-", "s", 2, 2),
        "weight_decay": ("--", "^", 2.4, 1),
    }
    for arm in shown:
        ids = arms.loc[arms["arm"] == arm, "run_id"]
        mine = curves[curves["run_id"].isin(ids)]
        dash, marker, width, order = styles[arm]
        for ax, key in zip(axes, ("weights/sparsity", "weights/l2_norm"), strict=True):
            mean = mine[mine["key"] == key].groupby("epoch")["value"].mean()
            ax.plot(
                mean.index,
                mean.values,
                dash,
                marker=marker,
                markevery=max(1, len(mean) // 8),
                markersize=4,
                linewidth=width,
                zorder=order,
                color=arm_color(arm),
                label=f"{arm} (n={len(ids)})",
            )
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
        "against its unregularized baseline (dashed): a sweep's best trial and baseline trial, "
        "or, for a study without a sweep, its ablation's best arm and baseline arm on one seed. "
        f"From {len(best_runs)} runs."
    )


def family_test_accuracy(groups, path: Path) -> str:
    """Per architecture: test accuracy of the baseline against the best regularized setting
    (a sweep's best trial; without a sweep, the ablation's best arm, every seed)."""
    _theme()
    rows = []
    archs = [arch for (_, arch), _ in groups]
    for (experiment, arch), group in groups:
        family = arch if archs.count(arch) == 1 else f"{arch}\n({experiment})"
        trials = group[group["role"] == "trial"]
        arms = group[group["role"] == "arm"]
        if not trials.empty:
            best = trials.loc[trials["selected_val_loss"].idxmin()]
            rows.append({"family": family, "run": "best regularized", "test acc": best["test_acc"]})
            for value in trials.loc[trials["baseline"], "test_acc"]:
                rows.append({"family": family, "run": "baseline", "test acc": value})
        elif not arms.empty:
            for value in arms.loc[arms["arm"] == "baseline", "test_acc"]:
                rows.append({"family": family, "run": "baseline", "test acc": value})
            regularized = arms[arms["arm"] != "baseline"]
            if not regularized.empty:
                best_arm = regularized.groupby("arm")["selected_val_loss"].mean().idxmin()
                for value in regularized.loc[regularized["arm"] == best_arm, "test_acc"]:
                    rows.append({"family": family, "run": "best regularized", "test acc": value})
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * frame["family"].nunique()), 3.8))
    sns.barplot(
        frame,
        x="family",
        y="test acc",
        hue="run",
        hue_order=["baseline", "best regularized"],
        palette=[arm_color("baseline"), "#2ca02c"],
        errorbar=("pi", 100),  # ablations: the bar spans the lowest to the highest seed
        ax=ax,
    )
    ax.set_xlabel("")
    ax.set_ylim(0, 1)
    _save(fig, path)
    return (
        "Test accuracy per architecture: the unregularized baseline against the best "
        "regularized setting chosen on validation loss (a sweep's best trial; without a sweep, "
        "the ablation arm with the lowest mean validation loss: bars are the mean over seeds, "
        f"whiskers the lowest to the highest seed). From {len(frame)} runs."
    )


def tokenizer_label(runs: pd.DataFrame) -> pd.Categorical:
    """ "char", "bpe 1000" (BPE with its vocabulary size knob), "word": finest units first."""
    # Runs log only the data fields their data set reads: vocab_size under BPE only. Spelling
    # runs recorded before the encoder could read sub-words or words have no tokenizer param:
    # they read characters.
    blank = pd.Series(index=runs.index, dtype=object)
    kind = runs.get("data.tokenizer", blank).fillna("char").astype(str)
    size = pd.to_numeric(runs.get("data.vocab_size", blank), errors="coerce").fillna(0).astype(int)
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
    for label in axes[0].get_yticklabels():
        label.set_color(arm_color(label.get_text()))
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
