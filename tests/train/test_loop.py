from __future__ import annotations

import copy

import pytest
import torch

from studylib.config import DataConfig, Speed, TrainConfig
from studylib.data import Splits, load_splits
from studylib.models import build_model
from studylib.models.mlp import MLPConfig
from studylib.train import fit
from studylib.train import loop as train_module
from studylib.train.regularizers import decay_parameters, penalty

SMALL = DataConfig(num_train=600, num_test=200, val_fraction=0.25, train_examples=300)


@pytest.fixture
def splits(data_cache) -> Splits:
    return load_splits(SMALL, seed=0, cache_dir=data_cache)


def mlp(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(MLPConfig(hidden=(16,), dropout=dropout), (40,), 10)


def test_penalties_equal_a_hand_computation():
    w1 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    w2 = torch.tensor([[-3.0], [4.0]])
    # L1: |1|+|-2|+|0.5|+|0|+|-3|+|4| = 10.5 ; L2: 1+4+0.25+0+9+16 = 30.25
    assert penalty([w1, w2], l1=0.1, l2=0.0).item() == pytest.approx(1.05)
    assert penalty([w1, w2], l1=0.0, l2=0.01).item() == pytest.approx(0.3025)
    assert penalty([w1, w2], l1=0.1, l2=0.01).item() == pytest.approx(1.3525)


def test_penalty_gradient_is_sign_and_twice_w():
    w = torch.tensor([[1.5, -2.0]], requires_grad=True)
    penalty([w], l1=0.5, l2=0.25).backward()
    # d/dw (0.5 |w| + 0.25 w^2) = 0.5 sign(w) + 0.5 w
    assert torch.allclose(w.grad, torch.tensor([[0.5 + 0.75, -0.5 - 1.0]]))


def test_penalties_skip_biases():
    model = mlp()
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay_parameters(model)) == [
        "head.weight",
        "hidden.0.0.weight",
    ]


def scripted_validation(monkeypatch, splits: Splits, losses: list[float]) -> None:
    real = train_module.evaluate
    queue = iter(losses)

    def fake(model, x, y, *task):
        if x is splits.x_val:
            return torch.tensor([next(queue), 0.5])
        return real(model, x, y, *task)

    monkeypatch.setattr(train_module, "evaluate", fake)


def test_early_stopping_waits_patience_epochs_and_restores_best(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6])
    model = mlp()
    snapshots = {}
    cfg = TrainConfig(max_epochs=7, patience=3, lr=1e-2, batch_size=50)
    result = fit(
        model,
        splits,
        cfg,
        seed=0,
        on_epoch=lambda e, _: snapshots.__setitem__(e, copy.deepcopy(model.state_dict())),
    )
    # Best at epoch 2; epochs 3, 4, 5 bring no improvement -> stop after epoch 5.
    assert (result.best_epoch, result.stopped_epoch, result.selected_epoch) == (2, 5, 2)
    assert result.status == "early_stopped"
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[2][key]), key
    assert not torch.equal(snapshots[5]["head.weight"], snapshots[2]["head.weight"])


def test_min_delta_counts_only_real_improvements(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.97, 0.96, 0.90, 0.5])
    cfg = TrainConfig(max_epochs=5, patience=2, min_delta=0.05, lr=1e-2, batch_size=50)
    result = fit(mlp(), splits, cfg, seed=0)
    # 0.97 and 0.96 are within min_delta of 1.0: two epochs without improvement -> stop at 3.
    assert (result.best_epoch, result.stopped_epoch) == (1, 3)


def test_without_early_stopping_the_last_epoch_is_kept(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.5, 0.9, 0.95])
    cfg = TrainConfig(max_epochs=4, early_stopping=False, patience=1, lr=1e-2, batch_size=50)
    result = fit(mlp(), splits, cfg, seed=0)
    assert (result.best_epoch, result.stopped_epoch, result.selected_epoch) == (2, 4, 4)
    assert result.status == "completed"
    assert result.final["selected_val_loss"] == pytest.approx(0.95)


def test_metrics_per_epoch_and_gap(splits):
    cfg = TrainConfig(max_epochs=3, lr=1e-2, batch_size=50)
    result = fit(mlp(), splits, cfg, seed=0)
    assert len(result.history) == 3
    first = result.history[0]
    assert first["gap/loss"] == pytest.approx(first["val/loss"] - first["train/loss"])
    assert first["gap/acc"] == pytest.approx(first["train/acc"] - first["val/acc"])
    # The train figures come from the same evaluation as validation (eval mode, no penalty).
    model = mlp()
    fit(model, splits, TrainConfig(max_epochs=1, lr=1e-2, batch_size=50, early_stopping=False), 0)
    loss, acc = train_module.evaluate(model, splits.x_train, splits.y_train).tolist()
    assert 0.0 <= acc <= 1.0 and loss > 0
    assert 0 <= result.final["test_acc"] <= 1


def test_same_seed_same_metrics_with_dropout(splits):
    cfg = TrainConfig(max_epochs=3, lr=1e-2, batch_size=50, l1=1e-4, l2=1e-3)
    a = fit(mlp(seed=5, dropout=0.3), splits, cfg, seed=5)
    b = fit(mlp(seed=5, dropout=0.3), splits, cfg, seed=5)
    c = fit(mlp(seed=6, dropout=0.3), splits, cfg, seed=6)
    assert a.history == b.history and a.final == b.final
    assert a.history != c.history


def test_decoupled_weight_decay_matches_torch_adamw(splits):
    """Our decay on weight matrices + Adam equals torch's AdamW with decay on the same group."""
    full = Splits(
        **{**splits.__dict__, "x_train": splits.x_train[:64], "y_train": splits.y_train[:64]}
    )
    cfg = TrainConfig(
        optimizer="adamw",
        lr=0.05,
        weight_decay=0.1,
        batch_size=64,
        max_epochs=1,
        early_stopping=False,
    )
    ours = mlp()
    fit(ours, full, cfg, seed=0)

    reference = mlp()
    decay = decay_parameters(reference)
    rest = [p for p in reference.parameters() if all(p is not d for d in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=0.05
    )
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(reference(full.x_train[order]), full.y_train[order])
    opt.zero_grad()
    loss.backward()
    opt.step()
    for (name, a), b in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_weight_decay_differs_from_l2_penalty_under_adam(splits):
    base = dict(optimizer="adam", lr=1e-2, batch_size=50, max_epochs=2, early_stopping=False)
    decayed = fit(mlp(), splits, TrainConfig(**base, weight_decay=0.05), seed=0)
    penalized = fit(mlp(), splits, TrainConfig(**base, l2=0.05), seed=0)
    plain = fit(mlp(), splits, TrainConfig(**base), seed=0)
    norms = [r.history[-1]["weights/l2_norm"] for r in (decayed, penalized, plain)]
    assert norms[0] < norms[2] and norms[1] < norms[2]
    assert norms[0] != pytest.approx(norms[1], rel=1e-3)


def test_non_finite_loss_ends_training_with_reason(splits):
    broken = Splits(**{**splits.__dict__, "x_train": splits.x_train.clone()})
    broken.x_train[0, 0] = float("nan")
    result = fit(mlp(), broken, TrainConfig(max_epochs=5, batch_size=50), seed=0)
    assert result.status == "diverged"
    assert result.stopped_epoch == 1 and "non-finite loss at epoch 1" in result.reason
    assert result.final == {} and result.state_dict is None


def test_l1_produces_more_small_weights_than_l2(splits):
    base = dict(lr=1e-2, batch_size=50, max_epochs=15, early_stopping=False)
    l1 = fit(mlp(), splits, TrainConfig(**base, l1=3e-3), seed=0)
    l2 = fit(mlp(), splits, TrainConfig(**base, l2=3e-3), seed=0)
    assert l1.history[-1]["weights/sparsity"] > l2.history[-1]["weights/sparsity"]


def test_bf16_autocast_rounds_differently_but_trains_alike(splits):
    cfg = TrainConfig(lr=1e-2, batch_size=50, max_epochs=3, early_stopping=False)
    plain = fit(mlp(), splits, cfg, seed=0)
    bf16 = fit(mlp(), splits, cfg, seed=0, speed=Speed(precision="bf16"))
    assert bf16.history[0]["train/loss"] != plain.history[0]["train/loss"]  # autocast was on
    for mine, theirs in zip(bf16.history, plain.history, strict=True):
        assert mine["val/loss"] == pytest.approx(theirs["val/loss"], rel=0.02)
    assert all(t.dtype == torch.float32 for t in bf16.state_dict.values())  # weights stay fp32


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(splits):
    cfg = TrainConfig(lr=1e-2, batch_size=50, max_epochs=2, early_stopping=False)
    eager = fit(mlp(), splits, cfg, seed=0)
    compiled = fit(mlp(), splits, cfg, seed=0, speed=Speed(compile=True))
    for mine, theirs in zip(compiled.history, eager.history, strict=True):
        assert mine["val/loss"] == pytest.approx(theirs["val/loss"], rel=1e-4)
    assert compiled.state_dict.keys() == eager.state_dict.keys()  # no "_orig_mod." prefix


def test_injected_penalty_gradient_equals_autograd_through_the_penalty(splits):
    """fit adds the penalty's gradient by hand: one SGD step must equal autograd's."""
    batch = Splits(
        **{**splits.__dict__, "x_train": splits.x_train[:64], "y_train": splits.y_train[:64]}
    )
    cfg = TrainConfig(
        optimizer="sgd", momentum=0.0, lr=0.5, l1=1e-2, l2=5e-2, batch_size=64, max_epochs=1
    )
    ours = mlp()
    result = fit(ours, batch, cfg.model_copy(update={"early_stopping": False}), seed=0)

    reference = mlp()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(reference(batch.x_train[order]), batch.y_train[order])
    objective = loss + penalty(decay_parameters(reference), l1=1e-2, l2=5e-2)
    objective.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.5 * p.grad
    for (name, a), b in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert result.history[0]["train/objective"] == pytest.approx(objective.item(), rel=1e-6)


def test_prechelt_rule_drives_early_stopping(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.8, 0.7, 0.72, 0.75, 0.8, 0.9])
    cfg = TrainConfig(max_epochs=7, stopping="gl", gl_alpha=5.0, lr=1e-2, batch_size=50)
    result = fit(mlp(), splits, cfg, seed=0)
    # GL(4) = 2.9 %, GL(5) = 7.1 % > 5: stop after epoch 5, keep epoch 3.
    assert (result.stopped_epoch, result.best_epoch, result.selected_epoch) == (5, 3, 3)
    assert result.final["stop_epoch/gl5"] == 5
    assert result.final["stop_epoch/gl1"] == 4
    assert result.final["best_gap_loss"] == pytest.approx(result.history[2]["gap/loss"])


def test_grad_clip_bounds_the_step():
    # One SGD step without momentum moves the weights by lr * g; clipped, |g| <= grad_clip.
    full = Splits(
        x_train=torch.randn(32, 40) * 50,  # large inputs: a large gradient
        y_train=torch.randint(0, 10, (32,)),
        x_val=torch.randn(8, 40),
        y_val=torch.randint(0, 10, (8,)),
        x_test=torch.randn(8, 40),
        y_test=torch.randint(0, 10, (8,)),
        num_classes=10,
    )
    base = dict(optimizer="sgd", momentum=0.0, lr=1.0, batch_size=32, max_epochs=1)
    moves = {}
    for clip in (0.0, 0.01):
        model = mlp()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        fit(model, full, TrainConfig(**base, early_stopping=False, grad_clip=clip), seed=0)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves[clip] = float((after - before).norm())
    assert moves[0.0] > 0.1  # unclipped, the step is large
    assert moves[0.01] == pytest.approx(0.01, rel=1e-4)  # clipped to lr * grad_clip exactly


def test_grad_norms_per_layer_match_a_hand_computation(splits):
    from studylib.models.rnn import RNNConfig

    def gru():
        torch.manual_seed(0)
        return build_model(RNNConfig(hidden=4, layers=2, bidirectional=True), (40,), 10)

    n = len(splits.y_train)  # one batch per epoch: the first epoch's norm is at the init
    cfg = TrainConfig(batch_size=n, max_epochs=2, early_stopping=False, grad_norms=True)
    result = fit(gru(), splits, cfg, seed=0)
    first = result.history[0]
    names = ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "head", "total"]
    assert sorted(k for k in first if k.startswith("grad_norm/")) == sorted(
        f"grad_norm/{name}" for name in names
    )
    reference = gru()
    loss = torch.nn.functional.cross_entropy(reference(splits.x_train), splits.y_train)
    loss.backward()
    squares = {}
    for name, params in reference.grad_groups().items():
        squares[name] = sum(float(p.grad.square().sum()) for p in params)
        assert first[f"grad_norm/{name}"] == pytest.approx(squares[name] ** 0.5, rel=1e-4)
    assert first["grad_norm/total"] == pytest.approx(sum(squares.values()) ** 0.5, rel=1e-4)
    assert "grad_norm/total" not in fit(mlp(), splits, TrainConfig(max_epochs=1), 0).history[0]


def test_default_gradient_groups_follow_module_paths():
    from studylib.models.cnn import CNNConfig
    from studylib.models.transformer import TransformerConfig
    from studylib.train.gradients import grad_groups

    assert list(grad_groups(mlp())) == ["hidden.0", "head"]
    cnn = build_model(CNNConfig(head=[8]), (40,), 10)
    assert list(grad_groups(cnn)) == ["blocks.0", "blocks.1", "blocks.2", "head.0", "head.1"]
    transformer = build_model(TransformerConfig(layers=2), (40,), 10)
    assert list(grad_groups(transformer)) == [
        "cls",
        "position",
        "embed",
        "layers.0",
        "layers.1",
        "norm",
        "head",
    ]
