"""Claim verdicts on synthetic runs where the answer is known, each way; one design per claim
set; the power the design states before any result."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import BASE_ACC, BASE_LOSS, SEEDS, arms_frame, known_study, run, shifted

from studylib.errors import ConfigError
from studylib.report.claims import (
    ACCURACY,
    CONTRADICTED,
    INCONCLUSIVE,
    LOSS,
    MECHANISM,
    NOT_MEASURED,
    REGRET_ACC,
    REGRET_MARGIN,
    SUPPORTED,
    check_claims,
    check_one_run_per_cell,
    design_power,
    evaluate_claims,
    newest_design,
    pruning_table,
    regret_by_seed,
    regret_table,
    stopping_rules,
    vanishing_gradients,
)
from studylib.report.stats import detectable_effect


def by_arm(results):
    return {r.arm: r for r in results if r.main.family == ACCURACY}


def test_arm_claims_each_way_with_loss_beside_accuracy():
    results = by_arm(evaluate_claims(known_study(), pd.DataFrame()))
    assert set(results) == {"dropout", "early_stopping", "l1", "weight_decay"}
    dropout, es, l1, wd = (results[a] for a in ("dropout", "early_stopping", "l1", "weight_decay"))
    assert (dropout.verdict, dropout.beside.verdict, dropout.agree) == (SUPPORTED, SUPPORTED, True)
    # Lower accuracy, lower loss: the two metrics disagree, and the row says so.
    assert (es.verdict, es.beside.verdict, es.agree) == (CONTRADICTED, SUPPORTED, False)
    assert es.main.test.mean == pytest.approx(-0.05) and es.main.test.n == 5
    assert l1.verdict == INCONCLUSIVE
    assert wd.verdict == NOT_MEASURED and wd.agree is None
    assert "no finished weight_decay runs" in wd.main.note
    assert dropout.main.family == ACCURACY and dropout.beside.family == LOSS
    assert dropout.claim == "Dropout improves test accuracy over the baseline"


def test_holm_within_the_family_decides_not_the_unadjusted_interval():
    # One arm at p ~ 0.02 among six: significant alone, not after Holm (m = 6).
    rng = np.random.default_rng(3)
    accs = {"baseline": BASE_ACC}
    for arm in ("dropout", "l1", "l2", "weight_decay", "all"):
        accs[arm] = shifted(BASE_ACC, 0.0, list(rng.normal(0, 0.02, 5)))
    accs["early_stopping"] = shifted(BASE_ACC, 0.01, [0.006, -0.006, 0.004, -0.003, 0.0])
    arms = arms_frame({"test_acc": accs, "test_loss": {a: BASE_LOSS for a in accs}})
    es = by_arm(evaluate_claims(arms, pd.DataFrame()))["early_stopping"]
    assert es.main.test.p < 0.05 and es.main.test.low > 0  # the unadjusted interval excludes 0
    others = [
        r.main.test.p
        for r in evaluate_claims(arms, pd.DataFrame())
        if r.arm != "early_stopping" and r.main.family == ACCURACY
    ]
    # Holm: the smallest p is multiplied by 6 (the others are far larger here).
    assert min(others) > es.main.test.p
    assert es.main.p_holm == pytest.approx(6 * es.main.test.p)
    assert es.verdict == INCONCLUSIVE


def test_fewer_than_two_pairs_is_inconclusive():
    arms = arms_frame({"test_acc": {"baseline": BASE_ACC, "dropout": shifted(BASE_ACC, 0.1)}})
    arms = arms[(arms["arm"] == "baseline") | (arms["seed"] == 0)]
    dropout = by_arm(evaluate_claims(arms, pd.DataFrame()))["dropout"]
    assert dropout.main.test.n == 1 and dropout.verdict == INCONCLUSIVE


def test_mechanism_claims_say_which_measure_they_used():
    zeros = arms_frame(
        {
            "kept_exact_zeros": {"l1": [0.30, 0.32, 0.29, 0.31, 0.33], "l2": [0.0] * 5},
            "kept_sparsity/1e-3": {"l1": [0.7] * 5, "l2": [0.03] * 5},
            # ignored while kept stats exist; when they do not, l2 beats l1 here (with spread)
            "final_sparsity": {
                "l1": [0.0, 0.01, 0.0, 0.02, 0.01],
                "l2": [0.5, 0.52, 0.49, 0.5, 0.51],
            },
            "test_acc": {"l1": BASE_ACC, "l2": BASE_ACC},
        }
    )
    l1 = next(r for r in evaluate_claims(zeros, pd.DataFrame()) if r.main.family == MECHANISM)
    assert l1.claim == "L1 drives more weights to zero than L2"
    assert l1.main.measured.startswith("share of the kept weights exactly 0")
    assert l1.verdict == SUPPORTED
    assert "|w| < 1e-3: 0.7 vs 0.03" in l1.main.evidence()
    # Subgradient L1 under Adam: no exact zeros in either arm, only a threshold effect.
    no_zeros = zeros.assign(kept_exact_zeros=0.0)
    l1 = next(r for r in evaluate_claims(no_zeros, pd.DataFrame()) if r.main.family == MECHANISM)
    assert l1.verdict == INCONCLUSIVE and l1.main.test.p == 1.0
    # Older runs: no kept-weight statistics, the last epoch's threshold share, labelled so.
    old = zeros.drop(columns=["kept_exact_zeros", "kept_sparsity/1e-3"])
    l1 = next(r for r in evaluate_claims(old, pd.DataFrame()) if r.main.family == MECHANISM)
    assert "|w| < 1e-3 at the last epoch (no kept-weight statistics logged)" in l1.main.measured
    assert l1.verdict == CONTRADICTED


def test_norm_and_gap_claims_both_ways():
    arms = arms_frame(
        {
            "kept_l2_norm": {
                "baseline": [27.0, 26.5, 27.4, 26.8, 27.1],
                "l2": [16.0, 15.8, 16.3, 15.9, 16.1],
                "weight_decay": [28.0, 27.6, 28.4, 27.7, 28.2],  # larger: contradicted
            },
            "gap_loss": {
                "baseline": [3.6, 3.7, 3.5, 3.6, 3.8],
                "dropout": [1.9, 1.8, 2.0, 1.9, 1.7],
            },
        }
    )
    verdicts = {
        r.claim: r.verdict
        for r in evaluate_claims(arms, pd.DataFrame())
        if r.main.family == MECHANISM
    }
    assert verdicts == {
        "L2 penalty shrinks the weight norm": SUPPORTED,
        "Decoupled weight decay shrinks the weight norm": CONTRADICTED,
        "Dropout narrows the train-validation gap": SUPPORTED,
    }


def test_duplicate_arm_and_seed_is_an_error_naming_both_runs():
    arms = known_study()
    twin = arms[(arms["arm"] == "dropout") & (arms["seed"] == 2)].assign(run_id="dropout-2-again")
    doubled = pd.concat([arms, twin], ignore_index=True)
    with pytest.raises(ConfigError, match="arm 'dropout' seed 2 has 2 finished runs") as err:
        evaluate_claims(doubled, pd.DataFrame())
    assert "dropout-2 and dropout-2-again" in str(err.value)
    # A killed run beside a finished one is no duplicate: only finished runs count.
    check_one_run_per_cell(pd.concat([arms, twin.assign(status="killed")], ignore_index=True))
    # The same cell in two designs is two designs, not a duplicate.
    check_one_run_per_cell(pd.concat([arms, twin.assign(design="d2")], ignore_index=True))


def test_newest_design_is_kept_and_the_older_one_named():
    old = known_study().assign(design="old", start_time=pd.Timestamp("2026-01-01", tz="UTC"))
    new = known_study().assign(design="new", start_time=pd.Timestamp("2026-02-01", tz="UTC"))
    new = new[new["arm"].isin(["baseline", "dropout"])]
    # The old design resumed later still counts from its first run.
    old.loc[old.index[0], "start_time"] = pd.Timestamp("2026-03-01", tz="UTC")
    both = pd.concat([old, new], ignore_index=True)
    choice = newest_design(both)
    assert choice.key == "new" and set(choice.arms["design"]) == {"new"}
    assert len(choice.arms) == 10
    assert list(choice.left_out["design"]) == ["old"] and choice.left_out["runs"].item() == 25
    assert "Left out: old (25 runs" in choice.note() and "shown: the newest, new" in choice.note()
    with pytest.raises(ValueError, match="mix ablation designs"):
        evaluate_claims(both, pd.DataFrame())
    assert newest_design(new).note() == ""


def curve_rows(run_id: str, key: str, values) -> list[dict]:
    return [{"run_id": run_id, "key": key, "epoch": e, "value": v} for e, v in enumerate(values, 1)]


# Double descent in validation loss: a first minimum at epoch 3, the lower one at epoch 9.
VAL = [1.0, 0.8, 0.6, 0.7, 0.9, 0.8, 0.6, 0.5, 0.4, 0.45]
TEST_ACC = [0.30, 0.40, 0.50, 0.48, 0.45, 0.50, 0.55, 0.58, 0.60, 0.62]
TEST_LOSS = [2.0, 1.8, 1.5, 1.6, 1.7, 1.6, 1.4, 1.3, 1.2, 1.25]


def regret_study(kept_epoch: int, with_test_curves: bool = True):
    rows, curves = [], []
    for seed in SEEDS:
        wobble = 0.002 * seed
        acc = [a + wobble for a in TEST_ACC]
        rows.append(
            run("baseline", seed, test_acc=acc[-1], test_loss=TEST_LOSS[-1], selected_epoch=10)
        )
        rows.append(
            run(
                "early_stopping",
                seed,
                test_acc=acc[kept_epoch - 1] - 0.001 * (seed % 2),
                test_loss=TEST_LOSS[kept_epoch - 1] + 0.001 * (seed % 3),
                selected_epoch=kept_epoch,
            )
        )
        curves += curve_rows(f"baseline-{seed}", "val/loss", VAL)
        if with_test_curves:
            curves += curve_rows(f"baseline-{seed}", "test/acc", acc)
            curves += curve_rows(f"baseline-{seed}", "test/loss", TEST_LOSS)
    return pd.DataFrame(rows), pd.DataFrame(curves)


def regret_claim(arms, curves):
    return next(r for r in evaluate_claims(arms, curves) if r.main.family == REGRET_ACC)


def test_early_stopping_regret_each_way():
    # Kept the full run's minimum (epoch 9): regret within the margin in every seed.
    arms, curves = regret_study(kept_epoch=9)
    result = regret_claim(arms, curves)
    assert result.verdict == SUPPORTED and result.main.test.null == REGRET_MARGIN["acc"]
    assert result.main.test.mean == pytest.approx(0.0004)
    # Gave up at the first minimum (epoch 3): 0.10 accuracy short of the full run's minimum.
    arms, curves = regret_study(kept_epoch=3)
    result = regret_claim(arms, curves)
    assert result.verdict == CONTRADICTED and result.main.test.mean == pytest.approx(0.1004)
    assert result.beside.verdict == CONTRADICTED  # 0.3 nats worse, margin 0.02
    table = regret_by_seed(arms, curves, "early_stopping")
    assert list(table["ref_epoch"]) == [9] * 5 and list(table["epochs"]) == [10] * 5
    # Optimistic: the best test accuracy anywhere (epoch 10), never below the honest regret.
    assert (table["best_acc"] - table["kept_acc"] >= table["ref_acc"] - table["kept_acc"]).all()
    shown = regret_table(arms, curves)
    assert shown["optimistic regret, test acc"].item().startswith("0.1204")
    assert shown["regret, test acc"].item().startswith("0.1004")


def test_regret_needs_the_baseline_test_curve():
    arms, curves = regret_study(kept_epoch=3, with_test_curves=False)
    result = regret_claim(arms, curves)
    assert result.verdict == NOT_MEASURED and "per-epoch test curve" in result.main.note
    assert regret_table(arms, curves) is None


def test_regret_reads_validation_error_when_the_arm_watched_it():
    arms, curves = regret_study(kept_epoch=3)
    arms["train.monitor"] = "val_error"
    # Validation accuracy peaks at epoch 4 (error lowest there), unlike the loss.
    val_acc = [0.3, 0.4, 0.5, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5]
    curves = pd.concat(
        [curves, *[pd.DataFrame(curve_rows(f"baseline-{s}", "val/acc", val_acc)) for s in SEEDS]]
    )
    assert list(regret_by_seed(arms, curves, "early_stopping")["ref_epoch"]) == [4] * 5
    assert "validation error minimum" in regret_claim(arms, curves).claim


def test_stopping_rule_table_on_the_baseline_curves():
    arms, curves = regret_study(kept_epoch=3)
    base = arms["arm"] == "baseline"
    arms.loc[base, "stop_epoch/patience"] = 6.0  # stops at 6, keeps 3
    arms.loc[base, "stop_epoch/gl5"] = [4.0, 5.0, math.nan, math.nan, 4.0]  # never, twice
    arms["stop_epoch/up2"] = math.nan  # never within the run: the key is absent
    arms.loc[base, "stop_epoch/pq0.5"] = 8.0
    table = stopping_rules(arms, curves).set_index("rule")
    assert list(table.index) == [
        "patience",
        "gl5",
        "pq0.5",
        "up2",
        "full run, lowest validation loss",
        "none (last epoch)",
    ]
    assert table.loc["gl5", "stopped"] == "3 of 5"
    assert table.loc["up2", "stopped"] == "0 of 5" and table.loc["up2", "kept epoch"] == ""
    assert table.loc["pq0.5", "kept epoch"].startswith("8 ")  # validation loss 0.5 at 8
    assert table.loc["gl5", "stop epoch"].startswith("4.333")
    assert table.loc["patience", "kept epoch"].startswith("3 ")
    # Test accuracy at epoch 3 of each seed's curve: 0.50 + 0.002 * seed, mean 0.504.
    assert table.loc["patience", "test acc at kept epoch"].startswith("0.504")
    assert table.loc["full run, lowest validation loss", "kept epoch"].startswith("9 ")
    assert table.loc["none (last epoch)", "test acc at kept epoch"].startswith("0.624")


def test_design_power_is_stated_from_the_declared_design():
    arms = known_study()
    arms["ablation.seeds"] = "[0, 1, 2, 3, 4]"
    arms["ablation.arms"] = '["baseline", "dropout", "l1", "l2", "early_stopping"]'
    power = design_power(arms)
    assert power.n == 5
    # Four arms against the baseline; L1 vs L2 and the L2 norm; no dropout-gap... dropout is
    # declared, so its gap claim counts; early stopping's regret (its arm is early-stopping only).
    assert power.families[ACCURACY] == 4 and power.families[MECHANISM] == 3
    assert power.families[REGRET_ACC] == 1
    assert power.detectable[ACCURACY] == pytest.approx(detectable_effect(5, 0.05 / 4))
    assert "d_z >= 2.48" in power.sentence()
    assert "Holm's first step (alpha / m, the conservative choice)" in power.sentence()


def test_pruning_table_for_l1_l2_and_baseline():
    arms = arms_frame(
        {
            "test_acc": {"baseline": BASE_ACC, "l1": BASE_ACC, "l2": BASE_ACC, "dropout": BASE_ACC},
            "kept_exact_zeros": {a: [0.1] * 5 for a in ("baseline", "l1", "l2", "dropout")},
            "kept_sparsity/1e-2": {a: [0.5] * 5 for a in ("baseline", "l1", "l2", "dropout")},
            "pruned_test_acc/1e-2": {
                a: shifted(BASE_ACC, -0.2 if a == "l2" else 0.0)
                for a in ("baseline", "l1", "l2", "dropout")
            },
        }
    )
    table = pruning_table(arms).set_index("arm")
    assert list(table.index) == ["baseline", "l1", "l2"]
    assert table.loc["l2", "drop at 1e-2"].startswith("0.2 ")
    assert table.loc["l1", "exactly 0"].startswith("0.1 ")


def test_check_claims_frame_has_both_sides():
    table = check_claims(known_study(), pd.DataFrame())
    table = table[table["family"] == ACCURACY].set_index("arm")
    es = table.loc["early_stopping"]
    assert (es["verdict"], es["beside_verdict"], es["agree"]) == (CONTRADICTED, SUPPORTED, False)
    assert es["n"] == 5 and es["difference"] == pytest.approx(-0.05)
    assert es["p_holm"] >= es["p"]


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
            jitter = 1 + 0.05 * ((seed + residual) % 3)  # a spread of differences
            for key, value in (
                ("grad_norm/hidden.0", ratio * last * jitter),
                ("grad_norm/hidden.2", last),
            ):
                curves.append({"run_id": run_id, "key": key, "epoch": 1, "value": value})
                curves.append({"run_id": run_id, "key": key, "epoch": 2, "value": 1.0})
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_vanishing_gradient_claim_both_ways():
    runs, curves = gradient_runs({False: 0.01, True: 0.8})  # plain: first layer 100x weaker
    result = vanishing_gradients(runs, curves)
    assert result.verdict == SUPPORTED and result.main.runs == 10
    jitter = [(1 + 0.05 * (s % 3)) / (1 + 0.05 * ((s + 1) % 3)) for s in SEEDS]
    expected = sum(math.log10(0.01 / 0.8 * j) for j in jitter) / len(SEEDS)
    assert result.main.test.mean == pytest.approx(expected)
    runs, curves = gradient_runs({False: 0.9, True: 0.01})
    assert vanishing_gradients(runs, curves).verdict == CONTRADICTED
    runs, curves = gradient_runs({False: 0.9})  # no residual partner
    assert vanishing_gradients(runs, curves).verdict == NOT_MEASURED
