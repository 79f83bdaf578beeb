"""Claims across the members of a study group (report/contrasts.py) on synthetic runs whose
answers are known, each way."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from studylib.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_MEASURED,
    SUPPORTED,
    claims_frame,
)
from studylib.report.contrasts import (
    FIRST_LAYER,
    GROUP_CLAIMS,
    ORDER_MARGIN,
    group_claims,
)
from studylib.report.group_figures import member_table

SEEDS = (0, 1, 2, 3, 4)
NOISE = (0.004, -0.003, 0.001, -0.002, 0.000)
BASE = (0.70, 0.72, 0.69, 0.71, 0.73)


def runs(group: str, members: dict[str, dict[str, list[float]]], arm="baseline") -> pd.DataFrame:
    """members: member -> metric -> one value per seed."""
    rows = []
    for member, metrics in members.items():
        for i, seed in enumerate(SEEDS):
            row = {
                "experiment": f"{group}-{member}",
                "role": "arm",
                "arm": arm,
                "seed": seed,
                "status": "completed",
                "run_id": f"{member}-{arm}-{seed}",
            }
            row.update({k: v[i] for k, v in metrics.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def shifted(by: float, base=BASE, noise=NOISE) -> list[float]:
    return [b + by + e for b, e in zip(base, noise, strict=True)]


def verdicts(frame: pd.DataFrame, curves: pd.DataFrame | None = None) -> dict[str, str]:
    results = group_claims(frame, pd.DataFrame() if curves is None else curves)
    table = claims_frame([r for group in results.values() for r in group])
    return dict(zip(table["claim"], table["verdict"], strict=True))


def test_order_claims_each_way():
    frame = runs(
        "order",
        {
            "cnn": {"test_acc": shifted(0.0)},
            "cnn_shuffled": {"test_acc": shifted(-0.30, noise=(0,) * 5)},  # hurts: supported
            "gru": {"test_acc": shifted(0.0)},
            "gru_shuffled": {"test_acc": shifted(+0.10, noise=(0,) * 5)},  # helps: contradicted
            "mlp": {"test_acc": shifted(0.0)},
            "mlp_shuffled": {"test_acc": shifted(0.0, noise=(0.002, 0.0, -0.001, 0.001, 0.0))},
            "gru_dummy": {"test_acc": shifted(0.0)},
        },
    )
    got = verdicts(frame)
    assert got["Shuffling the time axis hurts the CNN"] == SUPPORTED
    assert got["Shuffling the time axis hurts the GRU"] == CONTRADICTED
    mlp = f"Shuffling the time axis does not hurt the MLP (drop below {ORDER_MARGIN:g})"
    assert got[mlp] == SUPPORTED  # drop about 0, significantly below the margin
    assert got["A bidirectional GRU beats a one-directional one on test accuracy"] == NOT_MEASURED


def test_a_drop_as_large_as_the_margin_does_not_support_no_harm():
    # The MLP loses 0.02 on average: neither significantly below the margin nor above it.
    frame = runs(
        "order",
        {
            "mlp": {"test_acc": shifted(0.0)},
            "mlp_shuffled": {
                "test_acc": shifted(-ORDER_MARGIN, noise=(0.01, -0.01, 0.0, 0.02, -0.02))
            },
        },
    )
    mlp = f"Shuffling the time axis does not hurt the MLP (drop below {ORDER_MARGIN:g})"
    assert verdicts(frame)[mlp] == INCONCLUSIVE
    frame.loc[frame["experiment"] == "order-mlp_shuffled", "test_acc"] -= 0.2
    assert verdicts(frame)[mlp] == CONTRADICTED


def test_through_time_margin_of_one_decade():
    decades = [-8.0, -8.3, -7.9, -8.1, -8.2]
    frame = runs(
        "through_time",
        {
            "rnn": {
                "state_grad/init_decades": decades,
                "state_grad/kept_decades": decades,
                "test_acc": shifted(0.0),
            },
            # LSTM: 3 decades less lost than the RNN -> beyond the margin of one: supported.
            "lstm": {
                "state_grad/init_decades": shifted(3.0, decades),
                "state_grad/kept_decades": shifted(0.5, decades),  # half a decade: contradicted
                "test_acc": shifted(0.1, noise=(0,) * 5),
            },
            # GRU: one decade exactly (with spread): inconclusive against the margin.
            "gru": {
                "state_grad/init_decades": shifted(1.0, decades, (0.3, -0.3, 0.2, -0.2, 0.0)),
                "state_grad/kept_decades": [math.nan] * 5,
                "test_acc": shifted(-0.1, noise=(0,) * 5),
            },
        },
    )
    got = verdicts(frame)
    at = "from the last step to the first than the {}'s ({})"
    claim = "The tanh RNN's gradient falls at least one order of magnitude more " + at
    assert got[claim.format("LSTM", "at initialization")] == SUPPORTED
    assert got[claim.format("LSTM", "after training")] == CONTRADICTED
    assert got[claim.format("GRU", "at initialization")] == INCONCLUSIVE
    assert got[claim.format("GRU", "after training")] == NOT_MEASURED
    assert got["The LSTM beats the tanh RNN on test accuracy"] == SUPPORTED
    assert got["The GRU beats the tanh RNN on test accuracy"] == CONTRADICTED


def test_depth_reads_the_first_layer_at_epoch_one_from_the_curves():
    members = ("plain4", "plain16", "residual16", "dense16")
    frame = runs("cnn_depth", {m: {"test_acc": shifted(0.0)} for m in members})
    # Epoch 1: plain16 two decades below the others; epoch 2 says the opposite and is ignored.
    rows = []
    for _, run in frame.iterrows():
        low = run["experiment"].endswith("plain16")
        jitter = 1 + 0.05 * run["seed"]
        rows.append((run["run_id"], FIRST_LAYER, 1, 1e-4 * jitter**3 if low else 1e-2 * jitter))
        rows.append((run["run_id"], FIRST_LAYER, 2, 1.0 if low else 1e-6))
    curves = pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value"])
    got = verdicts(frame, curves)
    assert (
        got["At 16 layers the plain CNN's first-layer gradient is smaller than the residual's"]
        == SUPPORTED
    )
    assert got["The plain CNN's first-layer gradient shrinks from 4 to 16 layers"] == SUPPORTED
    assert got["At 16 layers the residual CNN beats the plain one on test accuracy"] == INCONCLUSIVE
    results = group_claims(frame, curves)["cnn_depth"]
    grad = next(r for r in results if "residual's" in r.claim)
    # log10(1e-4 j^3 / (1e-2 j)) = -2 + 2 log10(j) per seed, j = 1 + 0.05 seed
    expected = sum(-2 + 2 * math.log10(1 + 0.05 * s) for s in SEEDS) / len(SEEDS)
    assert grad.main.test.mean == pytest.approx(expected)


def test_holm_is_within_each_declared_family():
    # Four order-family claims: Holm multiplies the smallest p by the family's size.
    frame = runs(
        "order",
        {
            "cnn": {"test_acc": shifted(0.0)},
            "cnn_shuffled": {"test_acc": shifted(-0.01, noise=(0.01, -0.005, 0.0, 0.004, -0.002))},
        },
    )
    [cnn] = [r for r in group_claims(frame, pd.DataFrame())["order"] if "CNN" in r.claim]
    assert cnn.main.p_holm == pytest.approx(min(1.0, cnn.main.test.p))  # alone measured
    families = {c.family for c in GROUP_CLAIMS["order"]}
    assert families == {"order", "direction"}


def test_groups_without_runs_are_left_out():
    assert group_claims(runs("depth", {"plain": {"test_acc": shifted(0.0)}}), pd.DataFrame()) == {}


def test_spelling_token_claims_each_way():
    exact_match = "BPE input beats character input on test exact match (spelling)"
    shorter = "BPE makes the encoder's input shorter than characters do (noisy spellings)"
    per_word = [6.3, 6.4, 6.2, 6.35, 6.3]

    def frame(bpe_by: float, bpe_length_by: float, noise=NOISE) -> pd.DataFrame:
        return runs(
            "spelling_tokens",
            {
                "char": {"test_acc": shifted(0.0, noise=(0,) * 5), "tokens_per_word/val": per_word},
                "bpe": {
                    "test_acc": shifted(bpe_by, noise=noise),
                    "tokens_per_word/val": shifted(
                        bpe_length_by, per_word, (0.0, 0.05, 0.0, 0.02, 0.1)
                    ),
                },
                # Word tokens: exact match near 0 by construction, context and no claim.
                "word": {"test_acc": [0.0003] * 5, "tokens_per_word/val": [1.0] * 5},
            },
        )

    got = verdicts(frame(+0.05, -2.0))
    assert got == {exact_match: SUPPORTED, shorter: SUPPORTED}
    got = verdicts(frame(-0.15, +0.5))  # characters ahead; BPE longer (it never can be)
    assert got == {exact_match: CONTRADICTED, shorter: CONTRADICTED}
    assert verdicts(frame(0.0, -2.0, noise=(0.01, -0.02, 0.0, 0.015, -0.01)))[exact_match] == (
        INCONCLUSIVE
    )
    alone = frame(0.05, -2.0)
    got = verdicts(alone[~alone["experiment"].str.endswith("-bpe")])
    assert got == {exact_match: NOT_MEASURED, shorter: NOT_MEASURED}
    # Each claim is its own family: Holm leaves a lone p as it is.
    results = group_claims(frame(+0.05, -2.0), pd.DataFrame())["spelling_tokens"]
    assert all(r.main.p_holm == pytest.approx(r.main.test.p) for r in results)
    assert len({c.family for c in GROUP_CLAIMS["spelling_tokens"]}) == 2
    assert not any("word" in (c.a.member, c.b.member) for c in GROUP_CLAIMS["spelling_tokens"])


def test_spelling_members_show_loss_per_character_and_the_copy_floor():
    spelling = runs(
        "spelling_tokens",
        {
            member: {
                "test_acc": shifted(0.0),
                "test_loss": [0.7] * 5,
                "copy_acc/test": [0.53] * 5,
                "tokens_per_word/val": [6.3] * 5,
            }
            for member in ("char", "bpe")
        },
    )
    table = member_table(spelling, "spelling_tokens")
    assert list(table["member"]) == ["char", "bpe"]
    assert {"test_loss", "copy_acc/test", "tokens_per_word/val"} <= set(table.columns)
    words = runs("subwords", {"char": {"test_acc": shifted(0.0), "test_loss": [1.0] * 5}})
    assert "test_loss" not in member_table(words, "subwords").columns  # classification: as before
