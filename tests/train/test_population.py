"""Population training: members train as their sequential trials would, each its own run."""

from __future__ import annotations

import optuna
import pytest
import torch
from mlflow import MlflowClient

from studylib.config import Experiment
from studylib.data import load_splits
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.sweep import run_sweep
from studylib.sweep.storage import make_storage
from studylib.train import fit
from studylib.train.population import (
    MemberDropout,
    check_population,
    check_population_search,
    fit_population,
)

BASE = {
    "name": "pop",
    "data": {"num_train": 600, "num_test": 200, "val_fraction": 0.25, "train_examples": 100},
    "model": {"arch": "mlp", "hidden": [24]},
    "train": {"lr": 1e-2, "batch_size": 32, "max_epochs": 12, "patience": 3},
}
# Each member varies what a sweep varies; patience 1, 2 and 3 and Prechelt's rules stop at
# different epochs, through the same epoch step (`EpochBook`) as a sequential trial.
MEMBERS = [
    {},
    {"train.l1": 1e-3, "train.patience": 1},
    {"train.l2": 1e-2, "train.patience": 2},
    {"train.weight_decay": 0.05},
    {"train.early_stopping": False},
    {"train.stopping": "gl", "train.gl_alpha": 1.0},
    {"train.stopping": "up", "train.up_strips": 1, "train.strip_length": 2},
    {"train.monitor": "val_error", "train.patience": 2},
    {"train.monitor": "val_error", "train.stopping": "pq", "train.strip_length": 2},
]


@pytest.fixture
def splits(data_cache):
    return load_splits(Experiment.model_validate(BASE).data, 0, data_cache)


def sequential(exp: Experiment, splits):
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, splits.input_shape, splits.num_classes)
    return fit(model, splits, exp.train, exp.seed)


def assert_same_run(expected, got):
    assert got.status == expected.status and got.reason == expected.reason
    assert (got.best_epoch, got.stopped_epoch, got.selected_epoch) == (
        expected.best_epoch,
        expected.stopped_epoch,
        expected.selected_epoch,
    )
    assert len(got.history) == len(expected.history)
    for mine, theirs in zip(got.history, expected.history, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    assert got.final.keys() == expected.final.keys()
    for key in got.final:
        assert got.final[key] == pytest.approx(expected.final[key], rel=1e-4, abs=1e-5), key
    assert got.state_dict.keys() == expected.state_dict.keys()  # loads into a plain model
    for key, tensor in expected.state_dict.items():
        assert torch.allclose(got.state_dict[key], tensor, atol=1e-5), key


def test_members_without_dropout_match_their_sequential_trials(splits):
    exps = [Experiment.model_validate(BASE).with_values(v) for v in MEMBERS]
    expected = [sequential(exp, splits) for exp in exps]
    outcomes = fit_population(exps, splits)
    assert len({r.stopped_epoch for r in expected}) >= 3  # members leave at different epochs
    for want, got in zip(expected, outcomes, strict=True):
        assert got.error is None
        assert_same_run(want, got.result)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_proximal_l1_members_match_their_sequential_trials(splits, optimizer):
    """Each member's soft threshold is its own lr * l1 (Adam: over its own second moment)."""
    base = Experiment.model_validate(BASE).with_values(
        {"train.l1_method": "proximal", "train.optimizer": optimizer}
    )
    exps = [
        base.with_values(v)
        for v in ({"train.l1": 3e-3}, {"train.l1": 1e-2, "train.l2": 1e-3}, {"train.l1": 0.0})
    ]
    expected = [sequential(exp, splits) for exp in exps]
    outcomes = fit_population(exps, splits)
    assert expected[1].final["kept_exact_zeros"] > 0.1  # the step did zero weights
    for want, got in zip(expected, outcomes, strict=True):
        assert_same_run(want, got.result)
        # Exact zeros are decided at thresholds: the same weights land on 0 in both.
        assert got.result.final["kept_exact_zeros"] == want.final["kept_exact_zeros"]


def test_dropout_rates_are_per_member(splits):
    exps = [Experiment.model_validate(BASE).with_values({"model.dropout": p}) for p in (0.0, 0.5)]
    plain, dropped = fit_population(exps, splits)
    # The member without dropout is untouched by its neighbour's masks.
    assert_same_run(sequential(exps[0], splits), plain.result)
    first = dropped.result.history[0]["train/objective"]
    assert first != pytest.approx(plain.result.history[0]["train/objective"], rel=1e-3)


def test_member_dropout_keeps_the_expectation_and_is_off_in_eval():
    torch.manual_seed(0)
    layer = MemberDropout(0.25)
    x = torch.ones(20000)
    out = layer(x)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))
    layer.eval()
    assert torch.equal(layer(x), x)


def test_a_member_that_raises_ends_alone(splits):
    exps = [Experiment.model_validate(BASE).with_values(v) for v in MEMBERS[:3]]

    def prune_at_two(epoch, metrics):
        if epoch == 2:
            raise optuna.TrialPruned("pruned at epoch 2")

    outcomes = fit_population(exps, splits, [None, prune_at_two, None])
    assert isinstance(outcomes[1].error, optuna.TrialPruned) and outcomes[1].result is None
    for index in (0, 2):
        assert_same_run(sequential(exps[index], splits), outcomes[index].result)


def test_settings_members_must_share_are_checked():
    base = Experiment.model_validate(BASE)
    with pytest.raises(ConfigError, match=r"train.lr differs between members"):
        check_population([base, base.with_values({"train.lr": 0.1})])
    with pytest.raises(ConfigError, match=r"train.l1_method differs between members"):
        check_population([base, base.with_values({"train.l1_method": "proximal"})])
    with pytest.raises(ConfigError, match="share the architecture"):
        check_population([base, base.with_values({"model.hidden": [8]})])
    check_population([base, base.with_values({"model.dropout": 0.3, "train.l2": 0.1})])


def test_population_sweep_records_every_member_as_a_trial(tiny, settings):
    summary = run_sweep(tiny, settings, trials=4, population=3)  # a population of 3, then 1
    assert summary.trials_done == 4 and summary.trials_run == 4
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'trial'")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2, 3]
    baseline = [r for r in runs if r.data.tags.get("studylib.baseline") == "true"]
    assert len(baseline) == 1 and baseline[0].data.params["train.early_stopping"] == "False"
    study = optuna.load_study(study_name="tiny", storage=make_storage(settings.storage))
    by_number = {t.number: t for t in study.trials}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"test_acc", "selected_val_loss", "gap_loss"} <= run.data.metrics.keys()
        stopped = int(run.data.metrics["stopped_epoch"])
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert [m.step for m in history] == list(range(1, stopped + 1))
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert trial.value == pytest.approx(run.data.metrics["selected_val_loss"])


def test_population_refuses_a_searched_learning_rate(tiny, settings, capsys, tmp_path):
    searched = tiny.model_dump()
    searched["sweep"]["search"]["lr"] = {"low": 1e-4, "high": 1e-2, "log": True}
    with pytest.raises(ConfigError, match="sweep.search.lr is searched"):
        run_sweep(Experiment.model_validate(searched), settings, population=2)
    with pytest.raises(ConfigError, match="sweep.search.lr is searched"):  # with workers too
        run_sweep(Experiment.model_validate(searched), settings, population=2, workers=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.grad_clip": 1.0}, "train.grad_clip = 1.0; population training does not"),
        ({"train.grad_norms": True}, "train.grad_norms = True; population training does not"),
    ],
)
def test_population_refuses_what_it_does_not_implement(tiny, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_population_search(tiny.with_values(overrides))


def test_cli_refuses_population_on_text_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from studylib.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.toml").write_text(
        'name = "t"\n[data]\nname = "words"\n[model]\narch = "textcnn"\n'
    )
    assert main(["sweep", "t.toml", "--population", "2"]) == 2
    err = capsys.readouterr().err
    assert "data.name = 'words'" in err and "classifies fixed-shape examples only" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.toml"]  # nothing written
