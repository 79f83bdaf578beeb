"""Issue 15: the verdicts of the new lecture-notes claims on synthetic runs whose answers are
known, each way (supported, contradicted, inconclusive), and how each design is recognised."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest

from studylib.report import lecture
from studylib.report.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED

NOISE = [0.004, -0.003, 0.001, -0.002, 0.000, 0.003, -0.001, -0.002]


def row(arm: str, seed: int, **values) -> dict:
    return {
        "arm": arm,
        "seed": seed,
        "run_id": f"{arm}-{seed}-{values.get('data.train_examples', '')}-"
        f"{values.get('data.label_noise', '')}",
        "status": "completed",
        "experiment": "synthetic",
        "arch": "mlp",
        **values,
    }


def verdicts(results) -> dict[str, str]:
    return {r.arm or r.claim: r.verdict for r in results}


# ---------------------------------------------------------------------------------------------
# Memorization


def memorization_frame() -> pd.DataFrame:
    """The baseline fits (1.000 in all 8 seeds), dropout does not (about 0.4), L2 sits at the
    margin (0.95 give or take): supported, contradicted, inconclusive."""
    rows = []
    for seed in range(8):
        common = {"data.random_labels": "True", "test_acc": 0.1 + NOISE[seed], "stopped_epoch": 200}
        rows.append(row("baseline", seed, selected_train_acc=1.0, **common))
        rows.append(row("dropout", seed, selected_train_acc=0.4 + 5 * NOISE[seed], **common))
        rows.append(row("l2", seed, selected_train_acc=0.95 + 5 * NOISE[seed], **common))
    return pd.DataFrame(rows)


def test_memorization_verdicts_each_way():
    results = lecture.memorization_claims(memorization_frame())
    assert verdicts(results) == {"baseline": SUPPORTED, "dropout": CONTRADICTED, "l2": INCONCLUSIVE}
    base = results[0].main
    # Identical differences (1.0 in every seed): the exact sign-flip p, 2 / 2^8; Holm's second
    # step of three (dropout's far smaller p comes first) multiplies it by 2.
    assert base.test.n == 8 and base.test.p == pytest.approx(2 / 2**8)
    assert base.p_holm == pytest.approx(2 * 2 / 2**8)
    assert base.test.mean == pytest.approx(0.9) and base.test.null == pytest.approx(0.85)
    # Runs with true labels are not a memorization design.
    assert (
        lecture.memorization_claims(memorization_frame().assign(**{"data.random_labels": "False"}))
        == []
    )


def test_epochs_to_fit_is_the_first_epoch_at_the_level():
    curves = pd.DataFrame(
        {
            "run_id": ["a"] * 4 + ["b"] * 2,
            "key": "train/acc",
            "epoch": [1, 2, 3, 4, 1, 2],
            "value": [0.2, 0.96, 0.94, 1.0, 0.5, 0.6],
        }
    )
    assert lecture.epochs_to_fit(curves, "a") == 2
    assert math.isnan(lecture.epochs_to_fit(curves, "b"))


# ---------------------------------------------------------------------------------------------
# L2 against weight decay under Adam


def decay_frame(decay: float = 0.01, optimizer: str = "adam") -> pd.DataFrame:
    rows = []
    for seed in range(5):
        common = {"train.optimizer": optimizer, "train.l2": 0.0, "train.weight_decay": 0.0}
        rows.append(row("baseline", seed, kept_l2_norm=27.0, test_acc=0.47, **common))
        l2 = {**common, "train.l2": 0.005}
        # L2 shrinks the norm far more (supported) but scores lower (contradicted).
        rows.append(
            row("l2", seed, kept_l2_norm=15 + NOISE[seed], test_acc=0.45 + NOISE[seed], **l2)
        )
        wd = {**common, "train.weight_decay": decay}
        rows.append(row("weight_decay", seed, kept_l2_norm=25 - NOISE[seed], test_acc=0.48, **wd))
    return pd.DataFrame(rows)


def test_l2_against_decay_verdicts_each_way():
    results = lecture.l2_decay_claims(decay_frame())
    assert [r.verdict for r in results] == [SUPPORTED, CONTRADICTED]
    assert results[0].main.test.mean == pytest.approx(-10.0, abs=0.01)


def test_l2_against_decay_needs_matched_strengths_under_adam():
    assert lecture.matched_strengths(decay_frame()) == (0.005, 0.01)
    assert lecture.l2_decay_claims(decay_frame(decay=0.02)) == []  # tuned apart: not matched
    assert lecture.l2_decay_claims(decay_frame(optimizer="sgd")) == []  # equal by construction


def test_l2_against_decay_with_no_difference_is_inconclusive():
    frame = decay_frame()
    same = frame["arm"] == "weight_decay"
    l2 = frame[frame["arm"] == "l2"].set_index("seed")
    frame.loc[same, "kept_l2_norm"] = frame.loc[same, "seed"].map(l2["kept_l2_norm"]) + [
        0.01,
        -0.02,
        0.015,
        -0.01,
        0.005,
    ]
    frame.loc[same, "test_acc"] = frame.loc[same, "seed"].map(l2["test_acc"]) + [
        0.01,
        -0.02,
        0.015,
        -0.01,
        0.005,
    ]
    assert [r.verdict for r in lecture.l2_decay_claims(frame)] == [INCONCLUSIVE, INCONCLUSIVE]


# ---------------------------------------------------------------------------------------------
# Dropout as an ensemble


def ensemble_frame() -> pd.DataFrame:
    """MC dropout: higher accuracy (supported), loss no different (inconclusive), ECE higher
    (contradicted). The baseline has no dropout and is left out."""
    rows = []
    for seed in range(5):
        single = {"test_acc": 0.5, "test_loss": 1.5, "test_ece": 0.05, "train.mc_passes": 100}
        rows.append(
            row(
                "baseline",
                seed,
                **single,
                test_acc_mc=0.5,
                test_loss_mc=1.5,
                test_ece_mc=0.05,
                **{"model.dropout": 0.0},
            )
        )
        rows.append(
            row(
                "dropout",
                seed,
                **single,
                test_acc_mc=0.52 + NOISE[seed],
                test_loss_mc=1.5 + [0.02, -0.03, 0.01, -0.01, 0.02][seed],
                test_ece_mc=0.08 + NOISE[seed],
                **{"model.dropout": 0.5},
            )
        )
    return pd.DataFrame(rows)


def test_ensemble_verdicts_each_way():
    results = lecture.ensemble_claims(ensemble_frame())
    assert [r.verdict for r in results] == [SUPPORTED, INCONCLUSIVE, CONTRADICTED]
    assert {r.arm for r in results} == {"dropout"}
    assert "100 passes" in results[0].main.labels[0]
    assert lecture.ensemble_claims(ensemble_frame().drop(columns=["test_acc_mc"])) == []


# ---------------------------------------------------------------------------------------------
# Overfitting against data and noise


SIZES, NOISES = (250, 1000, 3200), (0.0, 0.2, 0.4)


def curve_frame(gap, benefit) -> pd.DataFrame:
    """gap(size, noise) of the baseline and benefit(size, noise) of dropout, with seed noise."""
    rows = []
    for (size, noise), seed in itertools.product(itertools.product(SIZES, NOISES), range(5)):
        cell = {"data.train_examples": size, "data.label_noise": noise, "model.dropout": 0.0}
        wiggle = NOISE[seed] * (1 + SIZES.index(size) + NOISES.index(noise))
        base_acc = 0.5 + wiggle
        rows.append(
            row(
                "baseline",
                seed,
                gap_acc=gap(size, noise) + wiggle,
                gap_loss=1.0,
                test_acc=base_acc,
                **cell,
            )
        )
        rows.append(
            row(
                "dropout",
                seed,
                gap_acc=0.1,
                gap_loss=0.5,
                test_acc=base_acc + benefit(size, noise) - wiggle / 2,
                **{**cell, "model.dropout": 0.3},
            )
        )
    return pd.DataFrame(rows)


def test_data_noise_verdicts_each_way():
    """Gap falls with size (supported) and does not move with noise (inconclusive); dropout's
    benefit is larger at 250 than at 3,200 (supported) and smaller with noise (contradicted)."""
    frame = curve_frame(
        gap=lambda size, noise: 0.5 - 0.1 * SIZES.index(size),
        benefit=lambda size, noise: 0.06 - 0.02 * SIZES.index(size) - 0.05 * noise,
    )
    results = lecture.data_noise_claims(frame)
    assert [r.verdict for r in results] == [SUPPORTED, INCONCLUSIVE, SUPPORTED, CONTRADICTED]
    gap_size = results[0].main
    # Per seed, the mean over the three noise levels: 0.5 at 250 minus 0.3 at 3,200.
    assert gap_size.test.n == 5 and gap_size.test.mean == pytest.approx(0.2, abs=0.01)
    assert gap_size.labels == ("250 examples", "3200 examples")
    assert results[3].main.labels == ("noise 0.4", "noise 0")
    table = lecture.data_noise_table(frame)
    assert (
        len(table) == 9 and "dropout: benefit" in table and table["dropout: strength"][0] == "0.3"
    )


def test_data_noise_leaves_out_a_seed_missing_a_cell_and_needs_two_levels_each():
    frame = curve_frame(lambda s, n: 0.3, lambda s, n: 0.0)
    gone = (
        (frame["seed"] == 4)
        & (frame["data.train_examples"] == 250)
        & (frame["data.label_noise"] == 0.2)
    )
    results = lecture.data_noise_claims(frame[~gone])
    assert results[0].main.test.n == 4  # seed 4 lacks a cell at 250: out of the size contrast
    one_size = frame[frame["data.train_examples"] == 1000]
    assert lecture.data_noise_claims(one_size) == []
    assert not lecture.is_learning_curve(one_size)


def test_family_power_names_each_family_and_its_size():
    results = lecture.data_noise_claims(curve_frame(lambda s, n: 0.3, lambda s, n: 0.0))
    sentence = lecture.family_power(results, 5)
    assert "'overfitting against data and noise' (m = 4)" in sentence
