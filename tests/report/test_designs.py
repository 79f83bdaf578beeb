"""One design per report, read back from a real MLflow store: runs are logged with the metric
and tag names the training side writes (synthetic values, no training), then `write_report`
must keep the newest design, name the one it left out, refuse a duplicate (arm, seed) before
writing anything, and put the summary, regret and stopping-rule figures on the page."""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from studylib.errors import ConfigError
from studylib.names import (
    ARCH_TAG,
    ARM_TAG,
    DATASET_TAG,
    KEY_TAG,
    ROLE_TAG,
    SEED_TAG,
    STATUS_TAG,
    STRENGTHS_TAG,
)
from studylib.report import write_report

VAL = [1.0, 0.8, 0.6, 0.7, 0.9, 0.8, 0.6, 0.5, 0.4, 0.45]  # minimum at epoch 9
TEST_ACC = [0.30, 0.40, 0.50, 0.48, 0.45, 0.50, 0.55, 0.58, 0.60, 0.62]
TEST_LOSS = [2.0, 1.8, 1.5, 1.6, 1.7, 1.6, 1.4, 1.3, 1.2, 2.5]  # overconfident at the end
ARM_PARAMS = {
    "baseline": {"model.dropout": "0.0", "train.early_stopping": "False"},
    "dropout": {"model.dropout": "0.3", "train.early_stopping": "False"},
    "early_stopping": {"model.dropout": "0.0", "train.early_stopping": "True"},
}
OFF = {"train.l1": "0.0", "train.l2": "0.0", "train.weight_decay": "0.0", "train.lr": "0.001"}


class Store:
    def __init__(self, uri: str):
        self.client = MlflowClient(uri)
        self.exp = self.client.create_experiment("toy")
        self.clock = int(time.time() * 1000)

    def run(self, tags: dict, params: dict, metrics: dict, curves: dict, start: int) -> str:
        run = self.client.create_run(self.exp, start_time=start, tags=tags)
        now = self.clock
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, values in curves.items():
            batch += [Metric(key, float(v), now, e) for e, v in enumerate(values, 1)]
        self.client.log_batch(
            run.info.run_id, metrics=batch, params=[Param(k, v) for k, v in params.items()]
        )
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def arm(self, arm: str, seed: int, design: str, start: int, seeds: list[int]) -> str:
        lift = {"baseline": 0.0, "dropout": 0.04 + 0.002 * seed, "early_stopping": 0.0}[arm]
        kept = 3 if arm == "early_stopping" else 10  # early stopping gave up at the first dip
        wobble = 0.003 * seed + 0.002 * (seed % 2) * (arm == "early_stopping")
        metrics = {
            "test_acc": TEST_ACC[kept - 1] + wobble + lift,
            "test_loss": TEST_LOSS[kept - 1] - lift + 0.01 * (seed % 3),
            "selected_val_loss": VAL[kept - 1],
            "selected_epoch": kept,
            "best_epoch": 9 if arm != "early_stopping" else 3,
            "best_gap_loss": 0.5,
            "gap_loss": 0.6 - lift,
            "kept_l2_norm": 20.0 + seed,
        }
        curves = {"train/loss": [0.9 - 0.05 * e for e in range(10)], "val/loss": VAL[:kept]}
        if arm == "baseline":
            metrics["stop_epoch/patience"] = 6
            if seed % 2 == 0:
                metrics["stop_epoch/gl5"] = 4  # GL5 never stops on odd seeds: absent
            curves["test/acc"] = [a + wobble for a in TEST_ACC]
            curves["test/loss"] = TEST_LOSS
        tags = {
            ROLE_TAG: "arm",
            ARM_TAG: arm,
            SEED_TAG: str(seed),
            KEY_TAG: design,
            STATUS_TAG: "completed",
            ARCH_TAG: "mlp",
            DATASET_TAG: "mnist1d",
        }
        params = {
            "seed": str(seed),
            "ablation.seeds": json.dumps(seeds),
            "ablation.arms": json.dumps(list(ARM_PARAMS)),
            **OFF,
            **ARM_PARAMS[arm],
        }
        return self.run(tags, params, metrics, curves, start)

    def parent(self, design: str, start: int, strengths: dict, tuning_seed: int) -> None:
        tags = {
            ROLE_TAG: "ablation",
            KEY_TAG: design,
            STRENGTHS_TAG: json.dumps(strengths),
            "studylib.tuning_seed": str(tuning_seed),
        }
        search = {"dropout": {"low": 0.0, "high": 0.5}, "patience": {"low": 2, "high": 40}}
        params = {
            "ablation.strength.dropout": "None",
            "ablation.strength.patience": "4",
            "sweep.search": json.dumps(search),
        }
        self.run(tags, params, {}, {}, start)


def two_designs(uri: str) -> Store:
    store = Store(uri)
    hour = 3_600_000
    t0 = store.clock - 10 * hour
    for seed in (0, 1):  # the first design: two seeds, run first
        for arm in ("baseline", "dropout"):
            store.arm(arm, seed, "old-design", t0, [0, 1])
    seeds = [0, 1, 2, 3, 4]
    store.parent("new-design", t0 + 2 * hour, {"dropout": 0.31, "patience": 4}, 1000)
    for seed in seeds:
        for arm in ARM_PARAMS:
            store.arm(arm, seed, "new-design", t0 + 2 * hour + seed, seeds)
    return store


def test_report_keeps_the_newest_design_and_says_what_it_left_out(settings, tmp_path):
    two_designs(settings.tracking_uri)
    index = write_report(settings.tracking_uri, ["toy"], tmp_path / "report")
    markdown = (index.parent / "report.md").read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[0] == "## toy / mlp: summary"  # the summary comes first
    assert "Left out: old-design (4 runs" in markdown
    assert "shown: the newest, new-design" in markdown
    assert "evaluation seeds 0, 1, 2, 3, 4; arms tuned on seed 1000" in markdown
    assert "dropout=0.31 (tuned)" in markdown and "patience=4 (given)" in markdown
    assert "toy-mlp-summary.png" in markdown
    # Stated before any result: five seeds, two arms in the accuracy family.
    assert "test accuracy (m = 2): d_z >= 2.0" in markdown
    rows = {line.split(" | ")[2]: line for line in markdown.splitlines() if "| toy | mlp |" in line}
    dropout = rows["Dropout improves test accuracy over the baseline"]
    assert "| 5 |" in dropout and dropout.count("supported") == 2
    early = rows["Early stopping improves test accuracy over the baseline"]
    assert "contradicted" in early and early.rstrip(" |").endswith("NO")  # loss disagrees
    regret = next(line for name, line in rows.items() if name.startswith("Early stopping keeps"))
    assert "contradicted" in regret  # gave up 0.1 accuracy short of the full run's minimum
    assert "optimistic regret, test acc" in markdown
    stops = markdown.split("Stopping rules replayed")[1]
    assert "| gl5 | 3 of 5 |" in stops and "| patience | 5 of 5 |" in stops


def test_duplicate_arm_and_seed_stops_the_report_before_it_writes(settings, tmp_path):
    store = two_designs(settings.tracking_uri)
    first = store.client.search_runs(
        [store.exp],
        f"tags.`{ARM_TAG}` = 'dropout' and tags.`{SEED_TAG}` = '3' and tags.`{KEY_TAG}` = 'new-design'",
    )[0].info.run_id
    second = store.arm("dropout", 3, "new-design", store.clock, [0, 1, 2, 3, 4])
    with pytest.raises(ConfigError, match="arm 'dropout' seed 3 has 2 finished runs") as err:
        write_report(settings.tracking_uri, ["toy"], tmp_path / "report")
    assert first in str(err.value) and second in str(err.value)
    assert not (tmp_path / "report").exists()
