"""The study summary on synthetic runs: per-arm numbers taken from the claims, strengths from
the ablation parent, warnings that fire only where something is off, and the sentence."""

from __future__ import annotations

import json

import matplotlib.image
import pandas as pd
import pytest
from synthetic_runs import known_study

from studylib.report import figures
from studylib.report.claims import CONTRADICTED, SUPPORTED, design_power, evaluate_claims
from studylib.report.summary import arm_warnings, plain_sentence, summarize, sweep_warnings

SEARCH = {
    "dropout": {"low": 0.0, "high": 0.5},
    "l2": {"low": 1e-6, "high": 1e-2, "log": True, "allow_zero": True},
    "patience": {"low": 5, "high": 30},
}


def parent(strengths: dict, tuning_seed: int | None, given: dict) -> pd.DataFrame:
    row = {
        "run_id": "parent",
        "design": "d1",
        "start_time": pd.Timestamp("2026-01-01", tz="UTC"),
        "tag:studylib.strengths": json.dumps(strengths),
        "sweep.search": json.dumps(SEARCH),
        **{f"ablation.strength.{k}": str(given.get(k)) for k in ("dropout", "l2", "patience")},
    }
    if tuning_seed is not None:
        row["tag:studylib.tuning_seed"] = str(tuning_seed)
    return pd.DataFrame([row])


def trials(best: dict) -> pd.DataFrame:
    rows = [
        {"trial": 0, "selected_val_loss": 3.9, "model.dropout": 0.0, "train.l2": 0.0},
        {"trial": 1, "selected_val_loss": 1.3, **best},
    ]
    frame = pd.DataFrame(rows)
    frame["sweep.search"] = json.dumps(SEARCH)
    frame["train.max_epochs"] = 200
    frame["best_epoch"] = frame.get("best_epoch", pd.Series([200, 40])).fillna(40)
    return frame


def study_summary(parents: pd.DataFrame, sweep: pd.DataFrame, seeds: str = "[0, 1, 2, 3, 4]"):
    arms = known_study().assign(**{"ablation.seeds": seeds, "train.lr": 1e-3})
    claims = evaluate_claims(arms, pd.DataFrame())
    return summarize("toy", "mlp", arms, claims, parents, sweep, design_power(arms))


def test_rows_come_from_the_claims_and_strengths_from_the_parent():
    summary = study_summary(
        parent({"dropout": 0.31, "patience": 12}, 1000, {"patience": 12}),
        trials({"model.dropout": 0.25, "train.l2": 1e-4}),
    )
    rows = summary.rows.set_index("arm")
    assert list(summary.rows["arm"]) == ["dropout", "l1", "weight_decay", "early_stopping"]
    es = rows.loc["early_stopping"]
    assert (es["acc_verdict"], es["loss_verdict"]) == (CONTRADICTED, SUPPORTED)
    assert es["acc_diff"] == pytest.approx(-0.05) and es["acc_low"] < -0.05 < es["acc_high"]
    assert es["n"] == 5 and es["acc_p_holm"] < 0.05
    assert rows.loc["dropout", "strength"] == "dropout=0.31 (tuned)"
    assert es["strength"] == "patience=12 (given)"
    assert rows.loc["dropout", "lr"] == pytest.approx(1e-3)
    assert summary.tuning_seed == 1000 and summary.seeds == [0, 1, 2, 3, 4]
    assert summary.warnings == []  # nothing at an edge, a separate tuning seed, five seeds
    assert summary.sentence == (
        "Over 5 paired seeds (Holm-adjusted paired t-tests, alpha = 0.05), dropout raised test "
        "accuracy over the baseline; early_stopping lowered test accuracy below the baseline; "
        "l1 could not be told apart from the baseline (the design finds d_z >= 2.48 with 80% "
        "power); weight_decay had no runs paired with the baseline; test loss nonetheless "
        "favoured early_stopping."
    )


def test_warnings_fire_where_something_is_off():
    summary = study_summary(
        parent({"dropout": 0.495, "l2": 1e-3}, 2, {}),  # dropout tuned to the top
        trials({"model.dropout": 0.1, "train.l2": 1.1e-6, "best_epoch": 200}),
        seeds="[0, 1, 2]",
    )
    text = "\n".join(summary.warnings)
    assert "train.l2" not in text
    assert "l2 = 1.1e-06, at the bottom of its search range [1e-06, 0.01]" in text
    assert "lowest validation loss at its last epoch, max_epochs = 200" in text
    assert "tuned dropout (0.495) sits at the top of its search range [0, 0.5]" in text
    assert "tuned l2" not in text  # 1e-3 is mid-range on the log scale
    assert "tuned on seed 2, which is also an evaluation seed" in text
    assert "Only 3 evaluation seeds" in text
    assert len(summary.warnings) == 5
    missing = study_summary(parent({}, None, {}), pd.DataFrame())
    assert any("tuning seed was not recorded" in w for w in missing.warnings)


def test_switched_off_regularizer_is_not_at_an_edge():
    assert sweep_warnings(trials({"model.dropout": 0.2, "train.l2": 0.0})) == []


def test_sentence_without_arms_and_with_every_arm_better():
    empty = pd.DataFrame(columns=["arm", "acc_verdict", "loss_verdict"])
    assert plain_sentence(empty, 5) == "No regularized arm was compared with the baseline."
    rows = pd.DataFrame(
        {"arm": ["l2", "all"], "acc_verdict": [SUPPORTED] * 2, "loss_verdict": [SUPPORTED] * 2}
    )
    assert plain_sentence(rows, 7) == (
        "Over 7 paired seeds (Holm-adjusted paired t-tests, alpha = 0.05), l2 and all raised "
        "test accuracy over the baseline."
    )


def test_summary_figure(tmp_path):
    summary = study_summary(parent({}, 1000, {}), pd.DataFrame())
    png = tmp_path / "summary.png"
    caption = figures.summary_differences(summary.rows, png)
    assert matplotlib.image.imread(png).shape[0] > 100
    assert "over 5 seeds" in caption and "From 30 paired runs" in caption


def test_arm_still_improving_at_max_epochs_is_warned():
    arms = known_study().assign(**{"train.max_epochs": 200, "best_epoch": 40})
    arms.loc[(arms["arm"] == "dropout") & (arms["seed"] < 2), "best_epoch"] = 200
    assert arm_warnings(arms) == [
        "The dropout arm had its lowest validation loss at its last epoch (max_epochs = 200) in "
        "2 of 5 seeds: it was still improving, and more epochs may change its result."
    ]
