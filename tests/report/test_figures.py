"""The figures' data, read back: heatmap bins in numeric order from the search range's own
edges, arm panels on one x range with means only where every seed has a value, honest
hyperparameter positions, one colour per arm, and PNGs written at 150 dpi or more."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

from studylib.config import ARMS
from studylib.report import figures

L2 = {"low": 1e-6, "high": 1e-2, "log": True, "allow_zero": True}
DROPOUT = {"low": 0.0, "high": 0.5}


def test_heatmap_bins_in_numeric_order_without_a_negative_edge():
    # Values chosen so that text order and numeric order differ: "(0.0001, 0.001]" sorted as
    # text came above "(1e-05, 0.0001]"; pd.cut's include_lowest put the first dropout edge at
    # -0.0005.
    trials = pd.DataFrame(
        {
            "baseline": [True] + [False] * 6,
            "train.l2": [0.0, 0.0, 3e-6, 5e-5, 5e-4, 5e-3, 1e-6],
            "model.dropout": [0.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.45],
            "selected_val_loss": [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    grid, counts = figures.heatmap_grid(trials, {"l2": L2, "dropout": DROPOUT})
    rows = [str(r) for r in grid.index]
    assert rows == ["off (0)", "1e-6 to 1e-5", "1e-5 to 1e-4", "1e-4 to 1e-3", "1e-3 to 1e-2"]
    assert [str(c) for c in grid.columns] == [
        "0 to 0.12",
        "0.12 to 0.25",
        "0.25 to 0.38",
        "0.38 to 0.5",
    ]
    assert not any(label.startswith("-") or " -" in label for label in rows + list(grid.columns))
    # Each range's ends fall in its end bins (the first closed on the left): l2 = 1e-6 at
    # dropout 0.45, l2 = 5e-3 at dropout 0.5. The baseline (loss 9) is left out.
    assert counts.loc["1e-6 to 1e-5", "0.38 to 0.5"] == 1
    assert counts.loc["1e-3 to 1e-2", "0.38 to 0.5"] == 1
    assert counts.loc["1e-6 to 1e-5", "0 to 0.12"] == 1  # 3e-6 at dropout 0.1
    assert counts.to_numpy().sum() == 6
    assert grid.loc["off (0)", "0 to 0.12"] == 1.0


def test_arm_panels_share_x_and_the_mean_stops_where_a_seed_stops():
    runs = pd.DataFrame(
        {
            "arm": ["baseline", "baseline", "early_stopping", "early_stopping"],
            "run_id": ["b0", "b1", "e0", "e1"],
        }
    )
    rows = []
    for run_id, epochs in (("b0", 20), ("b1", 20), ("e0", 5), ("e1", 9)):
        for epoch in range(1, epochs + 1):
            for key in ("train/loss", "val/loss"):
                rows.append((run_id, key, epoch, 1.0 / epoch))
    curves = pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value"])
    fig = figures.arm_curves_figure(runs, curves)
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 2
    assert drawn[0].get_xlim() == drawn[1].get_xlim()
    assert drawn[1].get_xlim()[1] >= 20  # the early-stopped panel spans the baseline's epochs
    val_mean = next(line for line in drawn[1].get_lines() if line.get_linestyle() == "-")
    assert list(val_mean.get_xdata()) == [1, 2, 3, 4, 5]  # e0 stopped at 5: no mean past it
    assert val_mean.get_color() == figures.arm_color("early_stopping")


def test_off_values_get_their_own_slot_left_of_a_log_range():
    x, off = figures.hparam_positions(pd.Series([0.0, 1e-6, 1e-4, 1e-2]), L2)
    assert list(off) == [True, False, False, False]
    assert x[1:] == pytest.approx([-6, -4, -2])
    assert x[0] == pytest.approx(-6 - figures.OFF_GAP)  # not a made-up 1e-7 on the axis
    linear, none_off = figures.hparam_positions(pd.Series([0.0, 0.3]), DROPOUT)
    assert list(linear) == [0.0, 0.3] and not none_off.any()


def test_one_colour_per_arm():
    colours = [figures.arm_color(arm) for arm in ARMS]
    assert len(set(colours)) == len(ARMS)


def png_dpi(path) -> float:
    data = path.read_bytes()
    at = data.index(b"pHYs")
    per_metre = struct.unpack(">I", data[at + 4 : at + 8])[0]
    return per_metre * 0.0254


def test_figures_are_written_at_150_dpi(tmp_path):
    trials = pd.DataFrame(
        {
            "baseline": [True, False, False, False, False],
            "selected_val_loss": [3.0, 1.0, 1.2, 1.1, 0.9],
            "model.dropout": [0.0, 0.1, 0.2, 0.3, 0.4],
            "train.l2": [0.0, 0.0, 1e-5, 1e-3, 1e-2],
        }
    )
    figures.loss_vs_hyperparameters(trials, {"dropout": DROPOUT, "l2": L2}, tmp_path / "h.png")
    assert png_dpi(tmp_path / "h.png") == pytest.approx(150, abs=0.5)
    assert np.isfinite(png_dpi(tmp_path / "h.png"))
