"""Prechelt's stopping criteria on a hand-made curve, each value worked out by hand."""

from __future__ import annotations

import math

import pytest

from studylib.train.stopping import (
    COMPARISON_RULES,
    comparison_rules,
    generalization_loss,
    make_rule,
    stop_epochs,
    training_progress,
)

#          epoch:  1    2    3    4     5     6    7    8
VAL = [1.0, 0.8, 0.7, 0.72, 0.75, 0.8, 0.85, 0.9]
TRAIN = [1.0, 0.5, 0.4, 0.39, 0.385, 0.384, 0.3839, 0.3838]


def test_generalization_loss_and_progress_by_hand():
    assert generalization_loss(0.72, 0.7) == pytest.approx(2.857142857)
    # P_2 over epochs 3, 4: 1000 * ((0.4 + 0.39) / (2 * 0.39) - 1)
    assert training_progress([0.4, 0.39]) == pytest.approx(12.820512820)


def test_gl_stops_when_generalization_loss_exceeds_alpha():
    # GL(4) = 2.86, GL(5) = 7.14
    assert stop_epochs(TRAIN, VAL, [make_rule("gl", gl_alpha=1.0)]) == {"gl1": 4}
    assert stop_epochs(TRAIN, VAL, [make_rule("gl", gl_alpha=5.0)]) == {"gl5": 5}
    assert stop_epochs(TRAIN, VAL, [make_rule("gl", gl_alpha=50.0)]) == {}  # never: absent


def test_pq_checks_quotient_at_strip_ends():
    # Strip ends 2, 4, 6: GL/P = 0/500, 2.857/12.82 = 0.22, 14.29/1.302 = 10.97
    rule = make_rule("pq", pq_alpha=0.5, strip=2)
    assert stop_epochs(TRAIN, VAL, [rule]) == {"pq0.5": 6}
    rule = make_rule("pq", pq_alpha=0.2, strip=2)
    assert stop_epochs(TRAIN, VAL, [rule]) == {"pq0.2": 4}


def test_up_counts_successive_rising_strips():
    # Val at strip ends 2, 4, 6, 8: 0.8, 0.72 (fell), 0.8 (rose), 0.9 (rose)
    assert stop_epochs(TRAIN, VAL, [make_rule("up", up_strips=1, strip=2)]) == {"up1": 6}
    assert stop_epochs(TRAIN, VAL, [make_rule("up", up_strips=2, strip=2)]) == {"up2": 8}
    assert stop_epochs(TRAIN, VAL, [make_rule("up", up_strips=3, strip=2)]) == {}


def test_patience_counts_epochs_without_improvement():
    # Best at 3; epochs 4, 5, 6 do not improve.
    assert stop_epochs(TRAIN, VAL, [make_rule("patience", patience=3)]) == {"patience3": 6}
    # min_delta 0.15: only epoch 2 (0.2 better than 1.0) counts; 3 is 0.1 better than 0.8.
    rule = make_rule("patience", patience=2, min_delta=0.15)
    assert stop_epochs(TRAIN, VAL, [rule]) == {"patience2": 4}


def test_rules_are_independent_on_the_same_curves():
    rules = [make_rule("gl", gl_alpha=5.0), make_rule("up", up_strips=2, strip=2)]
    assert stop_epochs(TRAIN, VAL, rules) == {"gl5": 5, "up2": 8}


def test_comparison_rules_have_fixed_names_and_never_means_absent():
    rules = comparison_rules(patience=3, min_delta=0.0, strip=2)
    assert tuple(rule.name for rule in rules) == COMPARISON_RULES
    # patience 3: best at 3, stop at 6; PQ2: quotient 10.97 at strip end 6; UP3 never stops.
    assert stop_epochs(TRAIN, VAL, rules) == {
        "patience": 6,
        "gl1": 4,
        "gl5": 5,
        "pq0.5": 6,
        "pq2": 6,
        "up2": 8,
    }
    # Another patience gives the same key: the value is a param of the run, not of the name.
    assert "patience" in stop_epochs(TRAIN, VAL, comparison_rules(2, 0.0, 2))


def test_training_progress_of_a_memorized_training_split_is_defined():
    assert training_progress([0.0, 0.0, 0.0]) == 0.0  # nothing left to learn, as any flat strip
    assert training_progress([0.2, 0.2]) == 0.0
    assert training_progress([0.02, 0.01, 0.0]) == math.inf  # reached zero within the strip


def test_pq_on_error_rates_through_memorization():
    """PQ on error rates: the strip that reaches 0 training error never stops, a strip of 0s
    stops at the first generalization loss."""
    train_error = [0.3, 0.1, 0.02, 0.0, 0.0, 0.0]
    val_error = [0.5, 0.4, 0.42, 0.41, 0.45, 0.46]
    # Strip ends 2: GL 0 -> no; 4: P = inf (0.02 -> 0), GL 2.5 -> no; 6: P = 0, GL 15 -> stop.
    rule = make_rule("pq", pq_alpha=0.5, strip=2)
    assert stop_epochs(train_error, val_error, [rule]) == {"pq0.5": 6}
    at_best = val_error[:5] + [0.39]  # a new best at epoch 6: GL 0, so P = 0 does not stop
    assert stop_epochs(train_error, at_best, [make_rule("pq", pq_alpha=0.5, strip=2)]) == {}


def test_gl_after_a_perfect_validation_error_stops_at_the_first_rise():
    val_error = [0.1, 0.0, 0.0, 0.05]
    assert generalization_loss(0.0, 0.0) == 0.0
    assert generalization_loss(0.05, 0.0) == math.inf
    assert stop_epochs([0.0] * 4, val_error, [make_rule("gl", gl_alpha=5.0)]) == {"gl5": 4}
