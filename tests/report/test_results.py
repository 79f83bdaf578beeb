from __future__ import annotations

import pandas as pd

from studylib.report import results
from studylib.report.results import load_curves, load_runs
from studylib.sweep import run_sweep


def test_curves_from_sql_equal_the_client_api(tiny, settings):
    run_sweep(tiny, settings, trials=2)
    runs = load_runs("tiny", settings.tracking_uri)
    assert list(runs["trial"]) == [0, 1]
    assert {"train.l1", "test_acc", "tag:studylib.arch", "arm", "seed"} <= set(runs.columns)
    keys = ["train/loss", "val/acc"]
    fast = load_curves(runs["run_id"], keys, settings.tracking_uri)
    slow = results._curves_from_client(list(runs["run_id"]), keys, settings.tracking_uri)
    slow = slow.sort_values(["run_id", "key", "epoch"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert len(fast) == 2 * 2 * 3  # 2 runs x 2 keys x 3 epochs


def test_unknown_experiment_gives_an_empty_frame(settings):
    assert load_runs("nope", settings.tracking_uri).empty
    assert load_curves([], tracking_uri=settings.tracking_uri).empty
