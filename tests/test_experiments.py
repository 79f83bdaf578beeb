"""Every file in experiments/ loads and trains; the family group sweeps and reports end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import local_settings
from mlflow import MlflowClient
from torch import nn

from studylib.config import Experiment, Settings, load_experiments
from studylib.models import build_model
from studylib.report import write_reports
from studylib.sweep import run_single, run_sweep

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "experiments").glob("*.toml"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, data_cache) -> Settings:
    """One MLflow database for the module: creating its tables costs more than a tiny run."""
    return local_settings(tmp_path_factory.mktemp("experiments"), data_cache)


def shrink(exp: Experiment, epochs: int) -> Experiment:
    """The same experiment on a tiny subset, for `epochs` epochs."""
    values = {"data.train_examples": 60, "train.max_epochs": epochs, "sweep.pruner.enabled": False}
    if exp.data.name == "mnist1d":
        values |= {"data.num_train": 600, "data.num_test": 200}
    if exp.data.is_text:
        values |= {"data.words_per_language": 200}
    return exp.with_values(values)


def test_every_family_has_a_file_and_the_group_lists_them():
    assert {"default.toml", "cnn.toml", "rnn.toml", "transformer.toml", "all.toml"} <= {
        p.name for p in FILES
    }
    archs = [exp.model.arch for exp in load_experiments(REPO / "experiments" / "all.toml")]
    assert archs == ["mlp", "cnn", "rnn", "transformer"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_experiment_file_runs_one_epoch(path, shared):
    for exp in load_experiments(path):
        tiny = shrink(exp, epochs=1)
        outcome = run_single(tiny, shared)
        assert outcome.status == "completed", exp.name
        assert len(outcome.result.history) == 1
        assert 0.0 <= outcome.result.final["test_acc"] <= 1.0
        # The swept dropout reaches the family's dropout layers.
        logistic = exp.model.arch == "mlp" and not exp.model.hidden  # no hidden layer to drop
        if "dropout" in exp.sweep.search and not logistic:
            shape, vocab = exp.data.input_shape, None
            if shape is None:  # token ids
                shape, vocab = (8,), 40
            model = build_model(exp.with_values({"model.dropout": 0.25}).model, shape, 10, vocab)
            rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
            assert 0.25 in rates, exp.name


def test_group_sweeps_every_family_and_reports_them_side_by_side(shared, tmp_path):
    members = [
        shrink(exp, epochs=2).with_values({"sweep.trials": 2})
        for exp in load_experiments(REPO / "experiments" / "all.toml")
    ]
    for exp in members:
        summary = run_sweep(exp, shared)
        assert summary.trials_done == 2 and summary.best_value is not None, exp.name

    client = MlflowClient(shared.tracking_uri)
    for exp in members:
        found = client.get_experiment_by_name(exp.name)
        assert found.tags["studylib.group"] == "families"
        runs = client.search_runs([found.experiment_id], "tags.`studylib.role` = 'trial'")
        assert len(runs) == 2
        assert {r.data.tags["studylib.group"] for r in runs} == {"families"}
        assert {r.data.tags["studylib.arch"] for r in runs} == {exp.model.arch}
        assert all(r.data.metrics["stopped_epoch"] == 2 for r in runs)

    written = write_reports(shared.tracking_uri, tmp_path / "reports", group="families")
    group_page = tmp_path / "reports" / "group-families" / "index.html"
    assert group_page in written and len(written) == 2 + len(members)  # + the landing page
    page = group_page.read_text()
    assert page.count("data:image/png;base64,") == 2  # families.png and families-test.png
    markdown = (group_page.parent / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if re.match(r"\| families-", line)]
    # One row per family, by study name: cnn_mnist1d, gru_mnist1d, mlp_mnist1d, transformer_...
    assert [row.split(" | ")[1] for row in rows] == ["cnn", "rnn", "mlp", "transformer"]
