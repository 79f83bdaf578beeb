"""Claim verdicts on synthetic runs where the answer is known, both ways."""

from __future__ import annotations

import pandas as pd

from studylib.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    SUPPORTED,
    check_claims,
    early_stopping_finds_minimum,
    paired_claim,
)

SEEDS = (0, 1, 2)


def arms_frame(values: dict[str, list[float]], column: str) -> pd.DataFrame:
    rows = []
    for arm, per_seed in values.items():
        for seed, value in zip(SEEDS, per_seed, strict=True):
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    column: value,
                    "status": "completed",
                    "run_id": f"{arm}-{seed}",
                }
            )
    return pd.DataFrame(rows)


def test_sparsity_claim_supported_and_contradicted():
    sparse_l1 = arms_frame({"l1": [0.40, 0.45, 0.42], "l2": [0.02, 0.03, 0.02]}, "final_sparsity")
    result = paired_claim(sparse_l1, "L1 sparser", "final_sparsity", "l1", "l2", +1, "sparsity")
    assert result.verdict == SUPPORTED and result.runs == 6
    assert "difference 0.4" in result.evidence
    dense_l1 = arms_frame({"l1": [0.01, 0.02, 0.01], "l2": [0.30, 0.35, 0.32]}, "final_sparsity")
    result = paired_claim(dense_l1, "L1 sparser", "final_sparsity", "l1", "l2", +1, "sparsity")
    assert result.verdict == CONTRADICTED


def test_noisy_difference_is_inconclusive_and_missing_arm_not_measured():
    noisy = arms_frame({"dropout": [0.5, 0.1, 0.9], "baseline": [0.4, 0.6, 0.5]}, "gap_loss")
    result = paired_claim(noisy, "c", "gap_loss", "dropout", "baseline", -1, "gap")
    assert result.verdict == INCONCLUSIVE
    only_one = arms_frame({"dropout": [0.1, 0.1, 0.1]}, "gap_loss")
    assert paired_claim(only_one, "c", "gap_loss", "dropout", "baseline", -1, "gap").verdict == (
        NOT_MEASURED
    )


def curves_for(run_id: str, val: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"run_id": run_id, "key": "val/loss", "epoch": range(1, len(val) + 1), "value": val}
    )


def test_early_stopping_minimum_both_ways():
    arms = arms_frame({"early_stopping": [3, 3, 3], "baseline": [9, 9, 9]}, "selected_epoch")
    dip_at_3 = [1.0, 0.8, 0.6, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3]
    curves = pd.concat([curves_for(f"baseline-{s}", dip_at_3) for s in SEEDS])
    assert early_stopping_finds_minimum(arms, curves).verdict == SUPPORTED
    # Double descent: the true minimum comes later than where patience gave up.
    second_descent = [1.0, 0.8, 0.6, 0.7, 0.9, 0.7, 0.5, 0.4, 0.45]
    curves = pd.concat([curves_for(f"baseline-{s}", second_descent) for s in SEEDS])
    result = early_stopping_finds_minimum(arms, curves)
    assert result.verdict == CONTRADICTED and "seed 0: -5" in result.evidence


def test_check_claims_covers_every_claim_and_ignores_unfinished_runs():
    rows = []
    for arm in ("baseline", "l1", "l2", "weight_decay", "dropout", "early_stopping"):
        for seed in SEEDS:
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "run_id": f"{arm}-{seed}",
                    "status": "completed",
                    "kept_sparsity/1e-3": 0.5 if arm == "l1" else 0.01 + 0.001 * seed,
                    "kept_l2_norm": 10.0 if arm == "baseline" else 5.0 + seed * 0.1,
                    "gap_loss": 2.0 if arm == "baseline" else 0.5 + seed * 0.01,
                    "test_loss": 3.0 if arm == "baseline" else 1.0 + seed * 0.01,
                    "selected_epoch": 2 if arm == "early_stopping" else 5,
                }
            )
    rows.append(
        {"arm": "l1", "seed": 3, "run_id": "x", "status": "diverged", "kept_sparsity/1e-3": -100.0}
    )
    curves = pd.concat([curves_for(f"baseline-{s}", [1.0, 0.5, 0.7, 0.9, 1.2]) for s in SEEDS])
    table = check_claims(pd.DataFrame(rows), curves)
    assert len(table) == 6
    assert set(table["verdict"]) == {SUPPORTED}


def gradient_runs(first_over_last: dict[bool, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, curves = [], []
    for residual, ratio in first_over_last.items():
        for seed in SEEDS:
            run_id = f"{'res' if residual else 'plain'}-{seed}"
            runs.append(
                {
                    "run_id": run_id,
                    "seed": seed,
                    "model.hidden": "[8, 8, 8]",
                    "model.residual": str(residual),
                }
            )
            last = 1.0 + 0.1 * seed
            for key, value in (("grad_norm/hidden.0", ratio * last), ("grad_norm/hidden.2", last)):
                curves.append({"run_id": run_id, "key": key, "epoch": 1, "value": value})
                curves.append({"run_id": run_id, "key": key, "epoch": 2, "value": 1.0})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_vanishing_gradient_claim_both_ways():
    from studylib.report.claims import vanishing_gradients

    runs, curves = gradient_runs({False: 0.01, True: 0.8})  # plain: first layer 100x weaker
    result = vanishing_gradients(runs, curves)
    assert result.verdict == SUPPORTED and result.runs == 6
    assert "plain -2 vs residual -0.0969" in result.evidence
    runs, curves = gradient_runs({False: 0.9, True: 0.01})
    assert vanishing_gradients(runs, curves).verdict == CONTRADICTED
    runs, curves = gradient_runs({False: 0.9})  # no residual partner
    assert vanishing_gradients(runs, curves).verdict == NOT_MEASURED
