"""The MNIST-1D paper's exact setting: no validation split, batches in order (issue 15, item 8)."""

from __future__ import annotations

import os

import pytest
import torch

from studylib.cli import main
from studylib.config import DataConfig, TrainConfig
from studylib.data import load_splits
from studylib.models import build_model
from studylib.models.mlp import MLPConfig
from studylib.train import fit

NO_VAL = DataConfig(num_train=600, num_test=200, val_fraction=0.0)


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(MLPConfig(hidden=(16,)), (40,), 10)


def test_no_validation_split_trains_every_example_and_scores_the_last_epoch(data_cache):
    splits = load_splits(NO_VAL, seed=0, cache_dir=data_cache)
    assert len(splits.y_val) == 0 and len(splits.y_train) == 600
    cfg = TrainConfig(max_epochs=3, early_stopping=False, lr=1e-2)
    result = fit(mlp(), splits, cfg, seed=0)
    assert result.status == "completed" and result.selected_epoch == 3
    assert all(not k.startswith(("val/", "gap/")) for epoch in result.history for k in epoch)
    assert "best_val_loss" not in result.final and 0 < result.final["test_acc"] <= 1
    # The scored weights are the last epoch's: their train figures are the history's last.
    assert result.final["selected_train_loss"] == result.history[-1]["train/loss"]


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_in_order_do_not_depend_on_the_order_seed(data_cache, shuffle):
    # `seed` of fit fixes only the batch order: in order, it changes nothing.
    splits = load_splits(NO_VAL, seed=0, cache_dir=data_cache)
    cfg = TrainConfig(max_epochs=2, early_stopping=False, lr=1e-2, shuffle=shuffle)
    a, b = (fit(mlp(), splits, cfg, seed=s).history[-1]["train/loss"] for s in (1, 2))
    assert (a == b) is (not shuffle)


@pytest.mark.parametrize(
    "body, named",
    [
        ("[train]\nearly_stopping = true\n", "train.early_stopping = true"),
        ("[train]\nearly_stopping = false\n[sweep]\ntrials = 3\n", "sweep.trials = 3"),
        (
            '[train]\nearly_stopping = false\n[sweep]\ntrials = 0\n[ablation]\narms = ["baseline", '
            '"l2"]\n[ablation.strength]\nl2 = 0.001\n',
            "ablation.arms",
        ),
        (
            "[train]\nearly_stopping = false\n[sweep]\ntrials = 0\n",
            "data.name = 'words'",
        ),
    ],
)
def test_selection_without_validation_is_one_line_exit_2(
    tmp_path, capsys, monkeypatch, body, named
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "p.toml"
    words = "words" in named
    data = '[data]\nname = "words"\n' if words else "[data]\n"
    model = '[model]\narch = "textcnn"\n' if words else ""
    path.write_text(f'name = "p"\n{data}val_fraction = 0.0\n{model}{body}')
    before = set(os.listdir(tmp_path))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.val_fraction = 0" in err[0] and named in err[0]
    assert set(os.listdir(tmp_path)) == before


def test_a_share_that_rounds_to_no_validation_is_still_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\n[data]\nval_fraction = 0.0001\n[train]\nearly_stopping = false\n')
    assert main(["train", str(path)]) == 2
    assert "gives 0 for validation" in capsys.readouterr().err
