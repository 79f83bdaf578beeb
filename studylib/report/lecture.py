"""More of the lecture notes, checked: memorization, L2 against weight decay under Adam, dropout
as an ensemble, and overfitting against data and noise (experiments/memorization.toml,
l2_vs_decay.toml, mc_dropout.toml, learning_curve.toml).

Each experiment is recognised by its design as declared in its runs' params, never by its
results or its name:
- memorization: ablation arm runs with `data.random_labels` on;
- L2 against decay: a design whose `l2` and `weight_decay` arms have matched strengths,
  weight_decay = 2 l2 (the strength at which plain SGD takes identical steps: a unit test),
  under Adam or AdamW;
- dropout as an ensemble: arm runs with dropout that logged `test_acc_mc` (`train.mc_passes`);
- data and noise: the arm runs of one study group and architecture spanning two or more
  training sizes and two or more label-noise levels.

Every claim is a `claims.Comparison` (a two-sided paired t-test by seed, stats.paired_test),
Holm-adjusted within the families declared here, before any result (claims.adjust). The
statistics are claims.py's and stats.py's; nothing here computes its own test.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, as in figures.py

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from studylib.config import SEARCHABLE  # noqa: E402
from studylib.report.claims import (  # noqa: E402
    ARM_NAMES,
    FINISHED,
    ClaimResult,
    adjust,
    compare,
)
from studylib.report.stats import ALPHA, detectable_effect, mean_ci  # noqa: E402

MEMORIZATION = "memorization"
L2_DECAY = "L2 against decay under Adam"
ENSEMBLE = "dropout as an ensemble"
DATA_NOISE = "overfitting against data and noise"
LECTURE_FAMILIES = {
    MEMORIZATION: "per arm: does the MLP still fit uniformly random training labels?",
    L2_DECAY: "the L2 penalty against decoupled decay at matched strength under Adam: weight "
    "norm and test accuracy",
    ENSEMBLE: "the mean of many dropout passes against the single pass: test accuracy, test "
    "loss, calibration",
    DATA_NOISE: "the baseline's gap against training size and label noise; each regularizer's "
    "benefit, smallest size against largest and most noise against none",
}
CHANCE = 0.1  # MNIST-1D and digits: ten classes
# "Fits" random labels: final train accuracy above this, declared before any run. Tested as
# train accuracy minus chance against the margin FIT_ACC - CHANCE.
FIT_ACC = 0.95


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "status" not in runs:
        return runs
    return runs[runs["status"].isin(FINISHED)]


def by_seed(runs: pd.DataFrame, column: str) -> dict[int, float]:
    """{seed: value} of `column` over runs with one run per seed and a finite value."""
    if column not in runs:
        return {}
    rows = runs[pd.to_numeric(runs[column], errors="coerce").notna()]
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[column], strict=True)}


def _flag(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series(False, index=runs.index)
    return runs[column].astype(str).str.lower() == "true"


def _number(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series(math.nan, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce")


def _arm_name(arm: str) -> str:
    return ARM_NAMES.get(arm, f"the {arm} arm")


def family_power(results: list[ClaimResult], n: int) -> str:
    """The d_z each family finds with 80% power at n seeds and Holm's first step, alpha / m."""
    sizes: dict[str, int] = {}
    for r in results:
        sizes[r.main.family] = sizes.get(r.main.family, 0) + 1
    parts = [
        f"'{f}' (m = {m}): d_z >= {detectable_effect(n, ALPHA / m):.3g}" for f, m in sizes.items()
    ]
    return (
        f"Design: {n} evaluation seeds, paired by seed; two-sided paired t-tests, Holm within "
        f"each family at alpha = {ALPHA:g}. Detectable with 80% power at Holm's first step: "
        + "; ".join(parts)
        + "."
    )


# ---------------------------------------------------------------------------------------------
# Memorization (Zhang et al. 2017)


def memorization_runs(arms: pd.DataFrame) -> pd.DataFrame:
    arms = _finished(arms)
    return arms[_flag(arms, "data.random_labels")] if not arms.empty else arms


def memorization_claims(arms: pd.DataFrame) -> list[ClaimResult]:
    """Per arm of a random-label design: final train accuracy (kept weights, the whole training
    split in eval mode) minus chance, against the margin FIT_ACC - CHANCE, paired by seed with
    chance. Supported: significantly above FIT_ACC; contradicted: significantly below."""
    runs = memorization_runs(arms)
    results = []
    for arm in dict.fromkeys(runs["arm"]) if not runs.empty else []:
        mine = runs[runs["arm"] == arm]
        train = by_seed(mine, "selected_train_acc")
        if arm == "baseline":
            claim = (
                f"Without regularization the MLP fits random labels (train accuracy > {FIT_ACC})"
            )
        else:
            claim = (
                f"{_arm_name(arm)}, at its strength tuned on clean labels, does not stop the MLP "
                f"from fitting random labels (train accuracy > {FIT_ACC})"
            )
        main = compare(
            MEMORIZATION,
            f"final train accuracy on the random labels minus chance ({CHANCE:g}), {arm}, "
            f"against the margin {FIT_ACC - CHANCE:g}",
            +1,
            train,
            {seed: CHANCE for seed in train},
            (f"{arm} train acc", "chance"),
            null=FIT_ACC - CHANCE,
        )
        results.append(ClaimResult(claim, main, arm=arm))
    return adjust(results)


def epochs_to_fit(curves: pd.DataFrame, run_id: str, level: float = FIT_ACC) -> float:
    """The first epoch whose train accuracy reached `level` (nan: never)."""
    mine = curves[(curves["run_id"] == run_id) & (curves["key"] == "train/acc")]
    reached = mine[mine["value"] >= level]
    return float(reached["epoch"].min()) if not reached.empty else math.nan


def memorization_table(arms: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per arm: its strength, epochs to reach FIT_ACC train accuracy (over the seeds that
    reached it), final train accuracy and test accuracy (mean and 95% t-interval)."""
    runs = memorization_runs(arms)
    rows = []
    for arm in dict.fromkeys(runs["arm"]):
        mine = runs[runs["arm"] == arm]
        epochs = [epochs_to_fit(curves, r) for r in mine["run_id"]]
        reached = [e for e in epochs if not math.isnan(e)]
        strength = {
            "dropout": _number(mine, "model.dropout"),
            "l2": _number(mine, "train.l2"),
            "l1": _number(mine, "train.l1"),
            "weight decay": _number(mine, "train.weight_decay"),
        }
        given = ", ".join(f"{k} {v.iloc[0]:.3g}" for k, v in strength.items() if v.iloc[0] > 0)
        rows.append(
            {
                "arm": arm,
                "strength": given or "none",
                "seeds": len(mine),
                f"reached train acc {FIT_ACC}": f"{len(reached)} of {len(mine)}",
                f"epochs to train acc {FIT_ACC}": str(mean_ci(reached)) if reached else "never",
                "epochs trained": str(mean_ci(_number(mine, "stopped_epoch"))),
                "final train acc": str(mean_ci(_number(mine, "selected_train_acc"))),
                "test acc": str(mean_ci(_number(mine, "test_acc"))),
            }
        )
    return pd.DataFrame(rows)


def memorization_figure(arms: pd.DataFrame, curves: pd.DataFrame, path: Path) -> str:
    """Train accuracy on random labels per epoch, mean over seeds, one line per arm."""
    runs = memorization_runs(arms)
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in dict.fromkeys(runs["arm"]):
        ids = set(runs.loc[runs["arm"] == arm, "run_id"])
        mine = curves[curves["run_id"].isin(ids) & (curves["key"] == "train/acc")]
        mean = mine.groupby("epoch")["value"].mean()
        ax.plot(mean.index, mean.to_numpy(), label=f"{arm} ({len(ids)} seeds)")
    ax.axhline(CHANCE, color="grey", linestyle=":", label="chance")
    ax.axhline(FIT_ACC, color="black", linestyle="--", linewidth=1, label=f"fit ({FIT_ACC})")
    ax.set(xlabel="epoch", ylabel="train accuracy (random labels)", ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return (
        "Train accuracy on uniformly random training labels per epoch (the whole training "
        "split, eval mode), mean over seeds per arm; validation and test keep their true labels. "
        f"From {len(runs)} runs."
    )


# ---------------------------------------------------------------------------------------------
# L2 penalty against decoupled weight decay under Adam (Loshchilov and Hutter)


def matched_strengths(arms: pd.DataFrame) -> tuple[float, float] | None:
    """(l2, weight_decay) when the design's l2 and weight_decay arms run under Adam (or AdamW)
    at weight_decay = 2 l2; None otherwise (say, each strength tuned on its own)."""
    arms = _finished(arms)
    if arms.empty or not {"l2", "weight_decay"} <= set(arms["arm"]):
        return None
    l2 = _number(arms[arms["arm"] == "l2"], "train.l2").dropna().unique()
    decay = _number(arms[arms["arm"] == "weight_decay"], "train.weight_decay").dropna().unique()
    optimizers = set(arms.get("train.optimizer", pd.Series(dtype=str)).astype(str))
    if len(l2) != 1 or len(decay) != 1 or not optimizers <= {"adam", "adamw"}:
        return None
    if not math.isclose(decay[0], 2 * l2[0], rel_tol=1e-9):
        return None
    return float(l2[0]), float(decay[0])


def l2_decay_claims(arms: pd.DataFrame) -> list[ClaimResult]:
    """Under Adam, L2 and decay at matched strength differ: the L2 arm's kept weight norm is
    the smaller and its test accuracy the higher (the penalty's gradient is rescaled by Adam's
    second moment, so where the loss's gradient is small it shrinks weights by about lr per
    step; decoupled decay shrinks them by lr * weight_decay * w, far less)."""
    matched = matched_strengths(arms)
    if matched is None:
        return []
    arms = _finished(arms)
    l2, wd = (arms[arms["arm"] == a] for a in ("l2", "weight_decay"))
    words = f"l2 = {matched[0]:.3g} against weight_decay = {matched[1]:.3g}"
    norm = compare(
        L2_DECAY,
        f"global L2 norm of the kept weights, l2 minus weight_decay ({words}), paired by seed",
        -1,
        by_seed(l2, "kept_l2_norm"),
        by_seed(wd, "kept_l2_norm"),
        ("l2", "weight_decay"),
    )
    acc = compare(
        L2_DECAY,
        f"test accuracy of the kept weights, l2 minus weight_decay ({words}), paired by seed",
        +1,
        by_seed(l2, "test_acc"),
        by_seed(wd, "test_acc"),
        ("l2", "weight_decay"),
    )
    return adjust(
        [
            ClaimResult(
                "Under Adam, the L2 penalty shrinks the weights more than decoupled decay at "
                "matched strength (weight_decay = 2 l2: equal steps under plain SGD)",
                norm,
            ),
            ClaimResult(
                "Under Adam, the L2 penalty and decoupled decay at matched strength differ in "
                "test accuracy (L2 the higher)",
                acc,
            ),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Dropout as an ensemble: MC dropout against the single pass


def ensemble_runs(arms: pd.DataFrame) -> pd.DataFrame:
    arms = _finished(arms)
    if arms.empty or "test_acc_mc" not in arms:
        return arms.iloc[0:0]
    with_mc = arms[_number(arms, "test_acc_mc").notna()]
    return with_mc[_number(with_mc, "model.dropout") > 0]


def ensemble_claims(arms: pd.DataFrame) -> list[ClaimResult]:
    """Per arm with dropout: the mean softmax of `train.mc_passes` stochastic passes against the
    single deterministic pass of the same kept weights, paired by seed (the same run): test
    accuracy (higher), test loss and ECE (lower)."""
    runs = ensemble_runs(arms)
    results = []
    for arm in dict.fromkeys(runs["arm"]) if not runs.empty else []:
        mine = runs[runs["arm"] == arm]
        passes = int(_number(mine, "train.mc_passes").max())
        labels = (f"MC dropout ({passes} passes)", "single pass")
        for what, column, sign, claim in (
            ("test accuracy", "test_acc", +1, "raises test accuracy"),
            ("test loss (NLL)", "test_loss", -1, "lowers test loss"),
            ("expected calibration error (15 bins)", "test_ece", -1, "lowers calibration error"),
        ):
            main = compare(
                ENSEMBLE,
                f"{what}, mean of {passes} dropout passes minus the single pass, {arm} arm, "
                "same run",
                sign,
                by_seed(mine, f"{column}_mc"),
                by_seed(mine, column),
                labels,
            )
            name = f"Averaging dropout passes (MC dropout) {claim} over the single pass"
            results.append(
                ClaimResult(name + (f" [{arm}]" if arm != "dropout" else ""), main, arm=arm)
            )
    return adjust(results)


# ---------------------------------------------------------------------------------------------
# Overfitting against data and noise: a learning curve


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Arm runs with their cell: `size` (training examples) and `noise` (label noise)."""
    runs = _finished(runs)
    if runs.empty or "data.train_examples" not in runs:
        return runs.iloc[0:0].assign(size=[], noise=[])
    return runs.assign(
        size=_number(runs, "data.train_examples"), noise=_number(runs, "data.label_noise").fillna(0)
    ).dropna(subset=["size"])


def is_learning_curve(runs: pd.DataFrame) -> bool:
    found = cells(runs)
    return found["size"].nunique() >= 2 and found["noise"].nunique() >= 2


def _per_seed(values: pd.DataFrame, where, across: str) -> dict[int, float]:
    """{seed: mean of `value` over the cells at `where`}, for seeds that have every level of
    `across` there (a seed missing a cell is left out, not averaged over fewer cells)."""
    chosen = values[where(values)]
    levels = chosen[across].nunique()
    out = {}
    for seed, group in chosen.groupby("seed"):
        if group[across].nunique() == levels and levels == values[across].nunique():
            out[int(seed)] = float(group["value"].mean())
    return out


def _contrast(values: pd.DataFrame, factor: str, high, low) -> tuple[dict, dict]:
    """Per seed, the mean over the other factor at factor = high, and at factor = low."""
    other = "noise" if factor == "size" else "size"
    return (
        _per_seed(values, lambda v: v[factor] == high, other),
        _per_seed(values, lambda v: v[factor] == low, other),
    )


def gap_values(runs: pd.DataFrame) -> pd.DataFrame:
    """Baseline runs: seed, size, noise, value = train minus validation accuracy (kept
    weights; train accuracy on the noisy training labels)."""
    found = cells(runs)
    base = found[found["arm"] == "baseline"]
    return base.assign(value=_number(base, "gap_acc"))[["seed", "size", "noise", "value"]]


def benefit_values(runs: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per seed and cell: the arm's test accuracy minus the baseline's (same seed, same cell)."""
    found = cells(runs)
    key = ["seed", "size", "noise"]
    base = found[found["arm"] == "baseline"].set_index(key)["test_acc"]
    mine = found[found["arm"] == arm].set_index(key)["test_acc"]
    both = (mine - base).dropna()
    return both.rename("value").reset_index()


def data_noise_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    """Declared before any run, one family: the baseline's gap (train minus validation
    accuracy) is larger at the smallest training size than at the largest, and at the highest
    label noise than at none; per regularizer, its benefit (test accuracy minus the baseline's,
    same seed and cell) is larger at the smallest size than at the largest, and at the highest
    noise than at none. Each contrast averages, per seed, over the other factor's levels."""
    found = cells(runs)
    if not is_learning_curve(found):
        return []
    sizes, noises = sorted(found["size"].unique()), sorted(found["noise"].unique())
    small, large, clean, noisy = sizes[0], sizes[-1], noises[0], noises[-1]
    at = {"size": (small, large), "noise": (noisy, clean)}
    words = {
        "size": (f"{int(small)} examples", f"{int(large)} examples"),
        "noise": (f"noise {noisy:g}", f"noise {clean:g}"),
    }
    gaps = gap_values(found)
    results = []
    for factor, claim in (
        ("size", "The generalization gap shrinks as the training set grows"),
        ("noise", "The generalization gap grows with label noise"),
    ):
        other = "label noise" if factor == "size" else "training size"
        a, b = _contrast(gaps, factor, *at[factor])
        main = compare(
            DATA_NOISE,
            f"baseline's train minus validation accuracy (kept weights), {words[factor][0]} "
            f"minus {words[factor][1]}, per seed averaged over {other}",
            +1,
            a,
            b,
            words[factor],
        )
        results.append(ClaimResult(claim, main, arm="baseline"))
    arms = [a for a in dict.fromkeys(found["arm"]) if a != "baseline"]
    for arm in arms:
        benefit = benefit_values(found, arm)
        for factor, claim in (
            (
                "size",
                f"{_arm_name(arm)} helps more at the smallest training size than at the largest",
            ),
            ("noise", f"{_arm_name(arm)} helps more at the highest label noise than at none"),
        ):
            other = "label noise" if factor == "size" else "training size"
            a, b = _contrast(benefit, factor, *at[factor])
            main = compare(
                DATA_NOISE,
                f"benefit = test accuracy, {arm} minus baseline (same seed and cell); benefit "
                f"at {words[factor][0]} minus at {words[factor][1]}, per seed averaged over "
                f"{other}",
                +1,
                a,
                b,
                words[factor],
            )
            results.append(ClaimResult(claim, main, arm=arm))
    return adjust(results)


def data_noise_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the baseline's gap (accuracy and loss) and test accuracy, and each arm's
    benefit over the baseline with its strength (mean and 95% t-interval over seeds)."""
    found = cells(runs)
    rows = []
    arms = [a for a in dict.fromkeys(found["arm"]) if a != "baseline"]
    for (size, noise), cell in found.groupby(["size", "noise"]):
        base = cell[cell["arm"] == "baseline"]
        row = {
            "training examples": int(size),
            "label noise": f"{noise:g}",
            "baseline gap (acc)": str(mean_ci(_number(base, "gap_acc"))),
            "baseline gap (loss)": str(mean_ci(_number(base, "gap_loss"))),
            "baseline test acc": str(mean_ci(_number(base, "test_acc"))),
        }
        for arm in arms:
            benefits = benefit_values(cell, arm)
            row[f"{arm}: benefit"] = str(mean_ci(benefits["value"]))
            mine = cell[cell["arm"] == arm]
            knob = SEARCHABLE.get(arm)  # early stopping: patience, given, not shown
            if knob is not None:
                row[f"{arm}: strength"] = f"{_number(mine, knob).iloc[0]:.3g}" if len(mine) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def data_noise_figure(runs: pd.DataFrame, path: Path) -> str:
    """Left: the baseline's gap against training size, one line per noise level. Right: each
    arm's benefit against training size at each noise level."""
    found = cells(runs)
    gaps = gap_values(found)
    arms = [a for a in dict.fromkeys(found["arm"]) if a != "baseline"]
    fig, axes = plt.subplots(1, 1 + len(arms), figsize=(4.2 * (1 + len(arms)), 3.8))
    panels = [("baseline gap (train - val acc)", gaps)] + [
        (f"{arm}: test acc minus baseline", benefit_values(found, arm)) for arm in arms
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        for noise, group in values.groupby("noise"):
            mean = group.groupby("size")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), marker="o", label=f"noise {noise:g}")
        ax.set_xscale("log")
        sizes = sorted(values["size"].unique())
        ax.set_xticks(sizes, [f"{int(size):,}" for size in sizes])
        ax.minorticks_off()  # the log axis's minor labels crowd the three sizes
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(title=title, xlabel="training examples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return (
        "Overfitting against data and noise: the baseline's generalization gap (train minus "
        "validation accuracy of the kept weights; train accuracy on the noisy labels) and each "
        "regularizer's benefit (its test accuracy minus the baseline's, same seed and cell), "
        f"mean over seeds, against training size, one line per label-noise level. From "
        f"{len(found)} runs."
    )
