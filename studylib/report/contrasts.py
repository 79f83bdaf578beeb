"""Claims that compare studies of one group, paired by seed (issue 15, items 5 to 8).

A study group (experiments/<group>.toml) runs several members, each its own study; a claim here
compares one member's runs (an ablation arm, by default the baseline) with another's, seed by
seed: a seed fixes the split, the label noise and the batch order, so two members of one seed
differ in what the group varies (the cell, the depth, the order of the inputs, the tokenizer).
The statistics are those of claims.py: a two-sided paired t-test per claim (`compare`), Holm
within the family (`adjust`), the verdict from the adjusted p, intervals unadjusted.

Every claim, its family, its metric, its side and its null are declared below, before any
result. A claim whose null is not 0 is a margin: "falls at least one order of magnitude more"
is a test of mean(a - b) = -1 decade, supported only when the difference is significantly
beyond it; "does not hurt (within 0.02)" is a test of the drop against 0.02, supported only
when the drop is significantly below it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from studylib.report.claims import FINISHED, ClaimResult, adjust, compare

FIRST_LAYER = "grad_norm/blocks.0"  # the CNN's stem convolution (every depth member has one)


@dataclass(frozen=True)
class Side:
    """The runs of one member study (its name without the group prefix) and one arm."""

    member: str
    arm: str = "baseline"

    def label(self) -> str:
        return self.member if self.arm == "baseline" else f"{self.member}/{self.arm}"


Metric = Callable[[pd.DataFrame, pd.DataFrame], pd.Series]  # (runs, curves) -> value per run


def column(name: str) -> Metric:
    def read(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
        return runs[name] if name in runs else pd.Series(math.nan, index=runs.index)

    return read


def log10_at_epoch(key: str, epoch: int) -> Metric:
    """log10 of a per-epoch metric at one epoch (the first layer's gradient norm at epoch 1)."""

    def read(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
        if curves.empty:
            return pd.Series(math.nan, index=runs.index)
        at = curves[(curves["key"] == key) & (curves["epoch"] == epoch)]
        values = dict(zip(at["run_id"], at["value"], strict=True))
        return runs["run_id"].map(
            lambda r: math.log10(values[r]) if values.get(r, 0) > 0 else math.nan
        )

    return read


@dataclass(frozen=True)
class Contrast:
    claim: str
    family: str
    measured: str
    metric: Metric
    a: Side
    b: Side
    claimed_sign: int  # +1: mean(a - b) above `null`; -1: below
    null: float = 0.0
    note: str = ""


TIME = "gradients through time"
TIME_ACC = "gradients through time: accuracy"
DEPTH_GRAD = "depth (CNN): first-layer gradient"
DEPTH_ACC = "depth (CNN): accuracy"
ORDER = "order"
DIRECTION = "direction"
SUBWORD_ACC = "sub-words: accuracy"
SUBWORD_LEN = "sub-words: sequence length"
SPELL_ACC = "sub-words (spelling): accuracy"
SPELL_LEN = "sub-words (spelling): sequence length"
PAPER = "paper: regularized against a tuned baseline"
TEST_ACC = column("test_acc")
DECADES = "log10(||dL/dh_1|| / ||dL/dh_40||) on a fixed batch of 100 training examples"


def _time_claims() -> tuple[Contrast, ...]:
    claims = []
    for when, words in (("init", "at initialization"), ("kept", "after training")):
        for other in ("lstm", "gru"):
            claims.append(
                Contrast(
                    f"The tanh RNN's gradient falls at least one order of magnitude more from "
                    f"the last step to the first than the {other.upper()}'s ({words})",
                    TIME,
                    f"{DECADES}, {words}; rnn minus {other}, paired by seed; tested against "
                    "-1 decade",
                    column(f"state_grad/{when}_decades"),
                    Side("rnn"),
                    Side(other),
                    -1,
                    null=-1.0,
                    note="decades",
                )
            )
    for other in ("lstm", "gru"):
        claims.append(
            Contrast(
                f"The {other.upper()} beats the tanh RNN on test accuracy",
                TIME_ACC,
                f"test accuracy, {other} minus rnn, paired by seed",
                TEST_ACC,
                Side(other),
                Side("rnn"),
                +1,
            )
        )
    return tuple(claims)


def _depth_claims() -> tuple[Contrast, ...]:
    grad = log10_at_epoch(FIRST_LAYER, 1)
    words = "log10 of the first convolution's gradient norm, epoch-1 mean"
    return (
        Contrast(
            "At 16 layers the plain CNN's first-layer gradient is smaller than the residual's",
            DEPTH_GRAD,
            f"{words}; plain16 minus residual16, paired by seed",
            grad,
            Side("plain16"),
            Side("residual16"),
            -1,
            note="decades",
        ),
        Contrast(
            "At 16 layers the plain CNN's first-layer gradient is smaller than the dense's",
            DEPTH_GRAD,
            f"{words}; plain16 minus dense16, paired by seed",
            grad,
            Side("plain16"),
            Side("dense16"),
            -1,
            note="decades",
        ),
        Contrast(
            "The plain CNN's first-layer gradient shrinks from 4 to 16 layers",
            DEPTH_GRAD,
            f"{words}; plain16 minus plain4, paired by seed",
            grad,
            Side("plain16"),
            Side("plain4"),
            -1,
            note="decades",
        ),
        Contrast(
            "At 16 layers the residual CNN beats the plain one on test accuracy",
            DEPTH_ACC,
            "test accuracy, residual16 minus plain16, paired by seed",
            TEST_ACC,
            Side("residual16"),
            Side("plain16"),
            +1,
        ),
        Contrast(
            "At 16 layers the dense CNN beats the plain one on test accuracy",
            DEPTH_ACC,
            "test accuracy, dense16 minus plain16, paired by seed",
            TEST_ACC,
            Side("dense16"),
            Side("plain16"),
            +1,
        ),
    )


# "Does not hurt": the drop must be significantly below this (declared before any result).
ORDER_MARGIN = 0.02


def _order_claims() -> tuple[Contrast, ...]:
    claims = [
        Contrast(
            f"Shuffling the time axis hurts the {name}",
            ORDER,
            f"test accuracy, {member} minus {member}_shuffled, paired by seed",
            TEST_ACC,
            Side(member),
            Side(f"{member}_shuffled"),
            +1,
        )
        for member, name in (("cnn", "CNN"), ("gru", "GRU"))
    ]
    claims.append(
        Contrast(
            f"Shuffling the time axis does not hurt the MLP (drop below {ORDER_MARGIN:g})",
            ORDER,
            f"test accuracy, mlp minus mlp_shuffled, paired by seed; tested against the margin "
            f"{ORDER_MARGIN:g}",
            TEST_ACC,
            Side("mlp"),
            Side("mlp_shuffled"),
            -1,
            null=ORDER_MARGIN,
        )
    )
    claims.append(
        Contrast(
            "A bidirectional GRU beats a one-directional one on test accuracy",
            DIRECTION,
            "test accuracy, bigru minus gru (same hidden size per direction), paired by seed",
            TEST_ACC,
            Side("bigru"),
            Side("gru"),
            +1,
        )
    )
    return tuple(claims)


def _subword_claims() -> tuple[Contrast, ...]:
    claims = [
        Contrast(
            f"{a.upper() if a == 'bpe' else a.capitalize()} tokens beat {b} tokens on test "
            "accuracy (language of a word)",
            SUBWORD_ACC,
            f"test accuracy, {a} minus {b}, paired by seed",
            TEST_ACC,
            Side(a),
            Side(b),
            +1,
        )
        for a, b in (("bpe", "word"), ("char", "word"), ("bpe", "char"))
    ]
    claims.append(
        Contrast(
            "BPE makes a word's sequence shorter than characters do",
            SUBWORD_LEN,
            "tokens per validation word, bpe minus char, paired by seed",
            column("tokens_per_word/val"),
            Side("bpe"),
            Side("char"),
            -1,
        )
    )
    return tuple(claims)


def _spelling_token_claims() -> tuple[Contrast, ...]:
    """The spelling model's encoder reads the noisy word as characters, BPE sub-words or one
    word token; the decoder writes characters in every member, so exact match and per-character
    loss compare. The lecture notes offer sub-words as the cure for out-of-vocabulary words,
    hence the claimed side "BPE beats characters" (as in "subwords"); the test is two-sided, so
    characters significantly ahead read "contradicted". Characters and BPE beating word tokens
    is no claim: under word tokens nearly every held-out source is <unk>, so exact match is
    near 0 by construction (tests/data/test_text.py), and the word member's numbers are
    context. BPE never lengthens a word (a merge only joins tokens), so the length claim says
    by how much it shortens the noisy input, not whether."""
    return (
        Contrast(
            "BPE input beats character input on test exact match (spelling)",
            SPELL_ACC,
            "test exact match of greedy decoding, bpe minus char (the decoder writes "
            "characters in both), paired by seed",
            TEST_ACC,
            Side("bpe"),
            Side("char"),
            +1,
        ),
        Contrast(
            "BPE makes the encoder's input shorter than characters do (noisy spellings)",
            SPELL_LEN,
            "source tokens per noisy validation word, bpe minus char, paired by seed",
            column("tokens_per_word/val"),
            Side("bpe"),
            Side("char"),
            -1,
        ),
    )


def _paper_claims() -> tuple[Contrast, ...]:
    return tuple(
        Contrast(
            f"Regularization beats a baseline with the same tuning budget ({model})",
            PAPER,
            f"test accuracy, {model}: arm all minus arm early_stopping (learning rate tuned, "
            "best checkpoint on validation, nothing else), paired by seed",
            TEST_ACC,
            Side(model, "all"),
            Side(model, "early_stopping"),
            +1,
        )
        for model in ("mlp", "cnn")
    )


# Group name (the `group` of its file in experiments/) -> its claims, declared before any run.
GROUP_CLAIMS: dict[str, tuple[Contrast, ...]] = {
    "through_time": _time_claims(),
    "cnn_depth": _depth_claims(),
    "order": _order_claims(),
    "subwords": _subword_claims(),
    "spelling_tokens": _spelling_token_claims(),
    "paper_tuned": _paper_claims(),
}


def _by_seed(
    runs: pd.DataFrame, curves: pd.DataFrame, group: str, side: Side, metric: Metric
) -> dict[int, float]:
    mine = runs[(runs["experiment"] == f"{group}-{side.member}") & (runs["arm"] == side.arm)]
    if mine.empty:
        return {}
    values = metric(mine, curves)
    return {
        int(seed): float(v)
        for seed, v in zip(mine["seed"], values, strict=True)
        if not math.isnan(float(v))
    }


def group_claims(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, list[ClaimResult]]:
    """Per group present in `runs` (a `load_runs` frame, one design per study): its declared
    claims, Holm-adjusted within each family. `curves` holds the per-epoch figures metrics
    read (grad_norm/*). A group none of whose members ran is left out."""
    if runs.empty or "experiment" not in runs or "arm" not in runs:
        return {}
    arms = runs[(runs["role"] == "arm") & runs["status"].isin(FINISHED)]
    out = {}
    for group, contrasts in GROUP_CLAIMS.items():
        if not arms["experiment"].str.startswith(f"{group}-").any():
            continue
        results = []
        for c in contrasts:
            a = _by_seed(arms, curves, group, c.a, c.metric)
            b = _by_seed(arms, curves, group, c.b, c.metric)
            main = compare(
                c.family,
                c.measured,
                c.claimed_sign,
                a,
                b,
                (c.a.label(), c.b.label()),
                null=c.null,
                note=c.note,
            )
            results.append(ClaimResult(c.claim, main))
        out[group] = adjust(results)
    return out
