"""Selection sees validation only: shuffling the test labels changes no selection.

A sweep with pruning and an ablation with a tuned arm, early stopping on loss and on error,
and per-epoch test curves, run twice: once as is, once with `y_test` permuted. Everything
selection decides (Optuna's parameters, values and pruning decisions, the tuned strengths, the
tuning studies, every run's kept and stopping epochs) must come out identical, while the test
figures change (the permutation did reach them).
"""

from __future__ import annotations

import dataclasses
import shutil

import optuna
import pytest
import torch
from conftest import TINY_ABLATION, local_settings
from mlflow import MlflowClient

from studylib.config import Experiment
from studylib.sweep import ablation, loops, run_sweep
from studylib.sweep.ablation import run_ablation
from studylib.sweep.storage import make_storage


def shuffled_test_labels(load):
    def loader(*args, **kwargs):
        splits = load(*args, **kwargs)
        order = torch.randperm(len(splits.y_test), generator=torch.Generator().manual_seed(7))
        return dataclasses.replace(splits, y_test=splits.y_test[order])

    return loader


def run_study(exp, root, data_cache, mlflow_template, monkeypatch, shuffle: bool) -> dict:
    root.mkdir()
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    settings = local_settings(root, data_cache)
    with monkeypatch.context() as patch:
        if shuffle:
            for module in (loops, ablation):  # where the sweep and the ablation load data
                patch.setattr(module, "load_splits", shuffled_test_labels(module.load_splits))
        run_sweep(exp, settings)
        summary = run_ablation(exp, settings)
    storage = make_storage(settings.storage)
    studies = {}
    for name in sorted(s.study_name for s in optuna.get_all_study_summaries(storage)):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        studies[name] = [
            (t.number, t.state, t.params, t.value, t.intermediate_values) for t in trials
        ]
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`studylib.role` != 'sweep'")
    selected, tested = {}, {}
    for run in runs:
        if run.data.tags["studylib.role"] == "ablation":
            continue
        name, metrics = run.info.run_name, run.data.metrics
        selected[name] = {
            key: metrics.get(key)
            for key in ("best_epoch", "stopped_epoch", "selected_epoch", "selected_val_loss")
        }
        selected[name].update({k: v for k, v in metrics.items() if k.startswith("stop_epoch/")})
        selected[name]["status"] = run.data.tags["studylib.status"]
        tested[name] = metrics.get("test_acc")
        if run.data.tags["studylib.role"] == "arm":
            curve = client.get_metric_history(run.info.run_id, "test/acc")
            tested[name + "/curve"] = sorted((m.step, m.value) for m in curve)
    return {
        "strengths": summary.strengths,
        "studies": studies,
        "selected": selected,
        "tested": tested,
    }


def test_shuffling_test_labels_changes_no_selection(
    tmp_path, data_cache, mlflow_template, monkeypatch
):
    raw = {**TINY_ABLATION, "train": {**TINY_ABLATION["train"], "max_epochs": 6}}
    raw["sweep"] = {
        **TINY_ABLATION["sweep"],
        "trials": 8,
        "pruner": {"enabled": True, "startup_trials": 2, "warmup_epochs": 0},
    }
    raw["ablation"] = {
        **TINY_ABLATION["ablation"],
        "arms": ["baseline", "l2", "early_stopping", "early_stopping_error"],
        "strength": {**TINY_ABLATION["ablation"]["strength"], "patience": 2},
        "nuisance": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},  # every arm tunes
        "test_curves": True,
    }
    exp = Experiment.model_validate(raw)
    plain = run_study(exp, tmp_path / "plain", data_cache, mlflow_template, monkeypatch, False)
    shuffled = run_study(exp, tmp_path / "shuffled", data_cache, mlflow_template, monkeypatch, True)

    sweep = plain["studies"]["tiny"]
    assert any(state == optuna.trial.TrialState.PRUNED for _, state, *_ in sweep)  # it pruned
    # The sweep, four tuning studies and the ablation's ledger of units (its values: each arm
    # run's selected validation loss, and each tuning's best).
    assert len(plain["studies"]) == 6
    assert shuffled["studies"] == plain["studies"]  # parameters, values, pruning decisions
    assert shuffled["strengths"] == plain["strengths"]
    assert shuffled["selected"] == plain["selected"]  # kept and stopping epochs, statuses
    assert len(plain["selected"]) == 8 + 4 * 2 + 4 * 2  # trials, tuning runs, arm runs
    # The shuffle did reach the test split: the test figures moved.
    changed = [k for k in plain["tested"] if plain["tested"][k] != shuffled["tested"][k]]
    assert len(changed) >= len(plain["tested"]) // 2
    assert any(key.endswith("/curve") for key in changed)
    assert plain["tested"]["baseline-seed0"] != pytest.approx(shuffled["tested"]["baseline-seed0"])
