"""Claims of the lecture notes, checked against the study's own runs.

Every verdict is computed from ablation runs (arms paired by seed: a seed fixes split, init,
batch order and dropout masks, so two arms of one seed differ only in the regularizer):
- "supported": the 95% t-interval of the paired difference lies wholly on the claimed side;
- "contradicted": it lies wholly on the other side;
- "inconclusive": it straddles zero, or fewer than two seeds pair up;
- "not measured": the runs a claim needs are not in the study.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from studylib.report.stats import Estimate, paired_difference

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = (
    "supported",
    "contradicted",
    "inconclusive",
    "not measured",
)


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    measured: str  # what was compared, in words
    verdict: str
    evidence: str  # the numbers behind the verdict
    runs: int


def verdict_of(difference: Estimate, claimed_sign: int) -> str:
    """`claimed_sign` -1: the claim says the difference is negative; +1: positive."""
    if difference.n < 2:
        return INCONCLUSIVE
    # Flip the interval onto the claimed side: the claim holds where it is wholly positive.
    low, high = sorted((difference.low * claimed_sign, difference.high * claimed_sign))
    if low > 0:
        return SUPPORTED
    if high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def _by_seed(arms: pd.DataFrame, arm: str, column: str) -> dict[int, float]:
    rows = arms[(arms["arm"] == arm) & arms[column].notna()]
    return {int(seed): float(value) for seed, value in zip(rows["seed"], rows[column], strict=True)}


def paired_claim(
    arms: pd.DataFrame,
    claim: str,
    column: str,
    arm: str,
    reference: str,
    claimed_sign: int,
    label: str,
) -> ClaimResult:
    a, b = _by_seed(arms, arm, column), _by_seed(arms, reference, column)
    measured = f"{label}: {arm} minus {reference}, paired by seed"
    if not a or not b:
        missing = " and ".join(name for name, d in ((arm, a), (reference, b)) if not d)
        return ClaimResult(claim, measured, NOT_MEASURED, f"no finished {missing} runs", 0)
    diff = paired_difference(a, b)
    mean_a = sum(a.values()) / len(a)
    mean_b = sum(b.values()) / len(b)
    evidence = f"{arm} {mean_a:.4g} vs {reference} {mean_b:.4g}; difference {diff}"
    return ClaimResult(claim, measured, verdict_of(diff, claimed_sign), evidence, len(a) + len(b))


def early_stopping_finds_minimum(arms: pd.DataFrame, curves: pd.DataFrame) -> ClaimResult:
    """The early-stopping arm trains exactly like the baseline of its seed until it stops, so
    the baseline's full validation curve shows where the true minimum was."""
    claim = "Early stopping picks the epoch of minimum validation loss"
    measured = (
        "epoch kept by early stopping minus the epoch of minimum validation loss over the "
        "baseline's full run of the same seed"
    )
    es = _by_seed(arms, "early_stopping", "selected_epoch")
    base_ids = dict(
        zip(
            arms.loc[arms["arm"] == "baseline", "seed"].astype(int),
            arms.loc[arms["arm"] == "baseline", "run_id"],
            strict=True,
        )
    )
    val = curves[curves["key"] == "val/loss"]
    offsets = {}
    for seed, kept in es.items():
        curve = val[val["run_id"] == base_ids.get(seed)]
        if not curve.empty:
            offsets[seed] = int(kept) - int(curve.loc[curve["value"].idxmin(), "epoch"])
    if not offsets:
        return ClaimResult(claim, measured, NOT_MEASURED, "no early_stopping/baseline pairs", 0)
    exact = sum(1 for v in offsets.values() if v == 0)
    verdict = SUPPORTED if exact == len(offsets) else (CONTRADICTED if exact == 0 else INCONCLUSIVE)
    evidence = f"exact in {exact} of {len(offsets)} seeds; offsets (epochs) " + ", ".join(
        f"seed {s}: {v:+d}" for s, v in sorted(offsets.items())
    )
    return ClaimResult(claim, measured, verdict, evidence, 2 * len(offsets))


VANISHING = "Deeper plain nets suffer more from vanishing gradients than residual ones"


def vanishing_gradients(runs: pd.DataFrame, curves: pd.DataFrame) -> ClaimResult:
    """Plain against residual MLPs of the same depth, paired by seed: log10 of the first hidden
    layer's gradient norm over the last hidden layer's, averaged over the first epoch's batches.
    Vanishing gradients make it negative; the claim is that plain nets make it more so."""
    measured = (
        "log10(grad norm of the first hidden layer / of the last), epoch 1, plain minus "
        "residual MLP of the same widths, paired by seed"
    )
    needed = {"model.residual", "model.hidden"}
    if not needed <= set(runs.columns) or curves.empty:
        return ClaimResult(VANISHING, measured, NOT_MEASURED, "no runs with gradient norms", 0)
    first_epoch = curves[(curves["epoch"] == 1) & curves["key"].str.startswith("grad_norm/")]
    by_run = first_epoch.pivot_table(index="run_id", columns="key", values="value")
    ratios: dict[tuple[str, bool], dict[int, float]] = {}
    for _, run in runs.iterrows():
        widths = json.loads(run["model.hidden"]) if isinstance(run["model.hidden"], str) else []
        first, last = "grad_norm/hidden.0", f"grad_norm/hidden.{len(widths) - 1}"
        if len(widths) < 2 or run["run_id"] not in by_run.index:
            continue
        norms = by_run.loc[run["run_id"]]
        if first not in norms or last not in norms or not norms[last] > 0 < norms[first]:
            continue
        key = (run["model.hidden"], str(run["model.residual"]) == "True")
        ratios.setdefault(key, {})[int(run["seed"])] = math.log10(norms[first] / norms[last])
    pairs = [
        (ratios[(h, False)], ratios[(h, True)]) for h, res in ratios if res and (h, False) in ratios
    ]
    if not pairs:
        return ClaimResult(
            VANISHING,
            measured,
            NOT_MEASURED,
            "no plain/residual MLP pair with gradient norms (experiments/depth.toml)",
            0,
        )
    plain, residual = pairs[0]
    diff = paired_difference(plain, residual)
    evidence = (
        f"plain {sum(plain.values()) / len(plain):.3g} vs residual "
        f"{sum(residual.values()) / len(residual):.3g} decades; difference {diff}"
    )
    return ClaimResult(
        VANISHING, measured, verdict_of(diff, -1), evidence, len(plain) + len(residual)
    )


CLAIMS: list[Callable[[pd.DataFrame, pd.DataFrame], ClaimResult]] = [
    lambda arms, _: paired_claim(
        arms,
        "L1 drives more weights to zero than L2",
        "kept_sparsity/1e-3",
        "l1",
        "l2",
        +1,
        "share of the kept weights with |w| < 1e-3",
    ),
    lambda arms, _: paired_claim(
        arms,
        "L2 penalty shrinks the weight norm",
        "kept_l2_norm",
        "l2",
        "baseline",
        -1,
        "global L2 norm of the kept weights",
    ),
    lambda arms, _: paired_claim(
        arms,
        "Decoupled weight decay shrinks the weight norm",
        "kept_l2_norm",
        "weight_decay",
        "baseline",
        -1,
        "global L2 norm of the kept weights",
    ),
    lambda arms, _: paired_claim(
        arms,
        "Dropout narrows the train-validation gap",
        "gap_loss",
        "dropout",
        "baseline",
        -1,
        "val minus train loss of the kept weights",
    ),
    early_stopping_finds_minimum,
    lambda arms, _: paired_claim(
        arms,
        "Early stopping improves test loss over training to the end",
        "test_loss",
        "early_stopping",
        "baseline",
        -1,
        "test loss of the kept weights",
    ),
]


def check_claims(arms: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per claim for one architecture's ablation runs (a `load_runs` frame, role arm)."""
    finished = arms[arms["status"].isin(["completed", "early_stopped"])]
    rows = [check(finished, curves) for check in CLAIMS]
    return pd.DataFrame([r.__dict__ for r in rows])
