"""Reading curves back (studylib.results): the bulk read gives what MLflow's own API gives."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

from studylib.report import results
from studylib.report.results import load_curves
from studylib.tracking import Tracker


@pytest.fixture
def logged(settings):
    tracker = Tracker(settings.tracking_uri, "curves", settings.artifact_root)
    ids = []
    for number in range(3):
        run = tracker.start_run(f"r{number}", tags={})
        for epoch in range(1, 6):
            loss = math.nan if (number, epoch) == (1, 3) else 1.0 / (epoch + number)
            run.log_epoch(epoch, {"train/loss": loss, "val/loss": 2 * loss, "other": 7.0})
        run.finish("FINISHED")
        ids.append(run.run_id)
    return settings.tracking_uri, ids


def test_bulk_read_equals_the_per_run_api(logged, monkeypatch):
    uri, ids = logged
    bulk = load_curves(ids, ("train/loss", "val/loss"), uri)
    monkeypatch.setattr(results, "SQL_SCHEMES", ())  # force MLflow's get_metric_history
    per_run = load_curves(ids, ("train/loss", "val/loss"), uri)
    order = ["run_id", "key", "epoch"]
    pd.testing.assert_frame_equal(
        bulk.sort_values(order).reset_index(drop=True),
        per_run.sort_values(order).reset_index(drop=True),
        check_dtype=False,
    )
    assert len(bulk) == 3 * 5 * 2 and "other" not in set(bulk["key"])
    nan_row = bulk[(bulk.run_id == ids[1]) & (bulk.key == "train/loss") & (bulk.epoch == 3)]
    assert math.isnan(nan_row["value"].item())  # stored as 0 with is_nan, read back as NaN


def test_bulk_read_keeps_the_later_of_two_writes_at_one_step(settings):
    run = Tracker(settings.tracking_uri, "twice", settings.artifact_root).start_run("r", {})
    run.log_epoch(1, {"val/loss": 1.0})
    run.flush()
    time.sleep(0.01)  # a later timestamp
    run.log_epoch(1, {"val/loss": 0.5})  # a retried epoch
    run.finish("FINISHED")
    curves = load_curves([run.run_id], ("val/loss",), settings.tracking_uri)
    assert curves["value"].tolist() == [0.5]
