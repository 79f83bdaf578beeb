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
from studylib.train.regularizers import PRUNE_THRESHOLDS, decay_parameters, penalty

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


def scripted_figures(monkeypatch, splits: Splits, figures: list[tuple[float, float]]) -> None:
    """Validation (loss, accuracy) per epoch as given; other splits evaluated for real."""
    real = train_module.evaluate
    queue = iter(figures)

    def fake(model, x, y, *task):
        if x is splits.x_val:
            return torch.tensor(next(queue))
        return real(model, x, y, *task)

    monkeypatch.setattr(train_module, "evaluate", fake)


def test_error_monitor_keeps_the_epoch_of_best_validation_accuracy(monkeypatch, splits):
    # Validation loss falls to the end; validation accuracy peaks at epoch 2.
    figures = [(1.0, 0.50), (0.9, 0.70), (0.8, 0.65), (0.7, 0.66), (0.6, 0.60)]
    base = dict(max_epochs=5, patience=2, lr=1e-2, batch_size=50)
    scripted_figures(monkeypatch, splits, figures)
    by_error = fit(mlp(), splits, TrainConfig(**base, monitor="val_error"), seed=0)
    # Error 0.30 at 2; 0.35, 0.34 do not improve: stop after epoch 4, keep epoch 2.
    assert (by_error.best_epoch, by_error.stopped_epoch, by_error.selected_epoch) == (2, 4, 2)
    assert by_error.final["best_val_acc"] == pytest.approx(0.70)
    assert by_error.final["best_val_loss"] == pytest.approx(0.9)
    scripted_figures(monkeypatch, splits, figures)
    by_loss = fit(mlp(), splits, TrainConfig(**base), seed=0)
    assert (by_loss.best_epoch, by_loss.stopped_epoch) == (5, 5)
    # The comparison rules watch the monitored figure too: GL1 on error stops at epoch 3
    # (0.35 / 0.30 - 1 = 16.7 %); on loss it never stops (the loss only falls).
    assert by_error.final["stop_epoch/gl1"] == 3
    assert "stop_epoch/gl1" not in by_loss.final


def test_stop_epoch_keys_name_rules_not_values(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.8, 0.7, 0.72, 0.75, 0.8, 0.9, 0.95])
    cfg = TrainConfig(max_epochs=8, patience=18, early_stopping=False, lr=1e-2, batch_size=50)
    result = fit(mlp(), splits, cfg, seed=0)
    rules = {k for k in result.final if k.startswith("stop_epoch/")}
    # Patience 18 never stops within 8 epochs: absent, not 0, and never "patience18".
    assert "stop_epoch/patience" not in rules and not any("18" in k for k in rules)
    assert rules <= {f"stop_epoch/{name}" for name in stopping_names()}
    assert result.final["stop_epoch/gl5"] == 5 and 0 not in [result.final[k] for k in rules]


def stopping_names():
    from studylib.train.stopping import COMPARISON_RULES

    return COMPARISON_RULES


def test_kept_weight_statistics_describe_the_restored_weights(monkeypatch, splits):
    scripted_validation(monkeypatch, splits, [1.0, 0.8, 0.9, 0.85, 0.95])
    model = mlp()
    cfg = TrainConfig(max_epochs=5, patience=3, lr=5e-2, batch_size=50)
    result = fit(model, splits, cfg, seed=0)
    assert (result.selected_epoch, result.stopped_epoch) == (2, 5)
    flat = torch.cat([w.detach().flatten() for w in decay_parameters(model)])
    assert result.final["kept_l2_norm"] == pytest.approx(float(flat.norm()), rel=1e-5)
    assert result.final["kept_l2_norm"] == pytest.approx(result.history[1]["weights/l2_norm"])
    assert result.final["kept_l2_norm"] != pytest.approx(result.history[-1]["weights/l2_norm"])
    share = float((flat.abs() < 1e-2).float().mean())
    assert result.final["kept_sparsity/1e-2"] == pytest.approx(share)
    assert "final_l2_norm" not in result.final and "final_sparsity" not in result.final


def test_kept_weight_stats_by_hand():
    from studylib.train.regularizers import kept_weight_names, kept_weight_stats

    w1 = torch.tensor([[0.0, 5e-3, -2e-4], [3e-5, -4e-6, 1.0]])
    w2 = torch.tensor([[0.0, 5e-7], [-0.5, 2.0]])  # 10 entries, 2 exactly 0
    stats = dict(zip(kept_weight_names(), kept_weight_stats([w1, w2]).tolist(), strict=True))
    norm = (5e-3**2 + 2e-4**2 + 3e-5**2 + 4e-6**2 + 1 + 5e-7**2 + 0.25 + 4) ** 0.5
    assert stats["kept_l2_norm"] == pytest.approx(norm)
    assert stats["kept_exact_zeros"] == pytest.approx(0.2)
    # |w| < 1e-2: 0, 5e-3, 2e-4, 3e-5, 4e-6, 0, 5e-7 -> 7; < 1e-3: 6; < 1e-4: 5; < 1e-5: 4;
    # < 1e-6: 0, 0, 5e-7 -> 3.
    expected = {"1e-2": 0.7, "1e-3": 0.6, "1e-4": 0.5, "1e-5": 0.4, "1e-6": 0.3}
    for label, value in expected.items():
        assert stats[f"kept_sparsity/{label}"] == pytest.approx(value), label


def test_prune_and_evaluate_zeroes_small_weights_and_keeps_the_model_whole(splits):
    cfg = TrainConfig(max_epochs=3, lr=1e-2, batch_size=50, early_stopping=False, l1=1e-3)
    model = mlp()
    result = fit(model, splits, cfg, seed=0, prune_evaluate=True)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in result.state_dict.items():  # the saved weights are not pruned
        assert torch.equal(value, kept[key]), key
    for label, threshold in (("1e-2", 1e-2), ("1e-4", 1e-4)):
        pruned = mlp()
        pruned.load_state_dict(kept)
        with torch.no_grad():
            for w in decay_parameters(pruned):
                w[w.abs() < threshold] = 0.0
        loss, acc = train_module.evaluate(pruned, splits.x_test, splits.y_test).tolist()
        assert result.final[f"pruned_test_loss/{label}"] == pytest.approx(loss, rel=1e-6)
        assert result.final[f"pruned_test_acc/{label}"] == pytest.approx(acc)
    # Pruning at 1e-2 changes the function (the 1e-2 share is not empty).
    assert result.final["kept_sparsity/1e-2"] > 0
    assert result.final["pruned_test_loss/1e-2"] != result.final["test_loss"]


def dead_input_splits(splits: Splits) -> Splits:
    """Input feature 0 is 0 everywhere: its first-layer weights get no loss gradient at all."""
    dead = {}
    for name in ("x_train", "x_val", "x_test"):
        x = getattr(splits, name).clone()
        x[:, 0] = 0.0
        dead[name] = x
    return Splits(**{**splits.__dict__, **dead})


@pytest.mark.parametrize(
    ("optimizer", "lr", "l1"), [("adam", 1e-2, 1e-3), ("adamw", 1e-2, 1e-3), ("sgd", 5e-2, 2e-2)]
)
def test_proximal_l1_zeroes_weights_without_loss_gradient_for_good(splits, optimizer, lr, l1):
    """Weights that the loss does not pull: the proximal step sets them to exactly 0 and they
    stay there; the subgradient makes them oscillate around 0, never on it."""
    dead = dead_input_splits(splits)
    column = {}
    for method in ("subgradient", "proximal"):
        model = mlp()
        first = model.hidden[0][0].weight
        seen = []
        cfg = TrainConfig(
            optimizer=optimizer,
            lr=lr,
            l1=l1,
            l1_method=method,
            batch_size=50,
            max_epochs=6,
            early_stopping=False,
        )
        record = lambda e, m, seen=seen, first=first: seen.append(first[:, 0].clone())  # noqa: E731
        fit(model, dead, cfg, seed=0, on_epoch=record)
        column[method] = seen
    assert all(bool((c == 0).all()) for c in column["proximal"][2:])  # zero from epoch 3 on
    assert not any(bool((c == 0).any()) for c in column["subgradient"])


def test_proximal_step_under_adam_is_preconditioned_by_hand():
    from studylib.train.loop import make_optimizer
    from studylib.train.regularizers import proximal_l1_step

    w = torch.nn.Parameter(torch.tensor([[0.02, -0.5, 0.003, 1.0]]))
    optimizer = make_optimizer(TrainConfig(optimizer="adam", lr=0.01), [w])
    g = torch.tensor([[0.4, -0.1, 2.0, 0.05]])
    w.grad = g.clone()
    optimizer.step()
    # One Adam step: m_hat = g, v_hat = g^2, w1 = w0 - lr g / (|g| + eps) = w0 - 0.01 sign(g).
    w1 = torch.tensor([[0.02, -0.5, 0.003, 1.0]]) - 0.01 * g.sign() * g.abs() / (g.abs() + 1e-8)
    assert torch.allclose(w.detach(), w1, atol=1e-7)
    l1 = 0.5
    proximal_l1_step(optimizer, [w], [0.01 * l1])
    tau = 0.01 * l1 / (g.abs() + 1e-8)  # 0.0125, 0.05, 0.0025, 0.1
    expected = w1.sign() * (w1.abs() - tau).clamp(min=0)  # 0.01 -> 0; -0.49 -> -0.44; ...
    assert torch.allclose(w.detach(), expected, atol=1e-7)
    assert w[0, 0].item() == 0.0  # |0.01| < 0.0125: exactly zero


def test_proximal_step_under_sgd_is_ista_scaled_by_momentum():
    from studylib.train.loop import make_optimizer
    from studylib.train.regularizers import proximal_l1_step

    for momentum in (0.0, 0.9):
        w = torch.nn.Parameter(torch.tensor([[0.02, -0.5, 0.004]]))
        optimizer = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=momentum), [w])
        proximal_l1_step(optimizer, [w], [0.1 * 0.01])  # lr * l1 = 1e-3
        tau = 1e-3 / (1 - momentum)  # the heavy ball's steady step for a constant pull l1
        expected = torch.tensor([[0.02 - tau, -0.5 + tau, max(0.004 - tau, 0.0)]])
        assert torch.allclose(w.detach(), expected, atol=1e-7), momentum


@pytest.mark.parametrize(
    ("optimizer", "lr", "l1", "momentum"),
    [("adam", 1e-2, 1e-2, 0.9), ("sgd", 2e-2, 1e-2, 0.9), ("sgd", 0.1, 2e-2, 0.0)],
)
def test_proximal_l1_leaves_lasting_exact_zeros_in_a_trained_mlp(
    splits, optimizer, lr, l1, momentum
):
    runs = {}
    for method in ("subgradient", "proximal"):
        model = mlp()
        zeros = []
        cfg = TrainConfig(
            optimizer=optimizer,
            lr=lr,
            l1=l1,
            l1_method=method,
            momentum=momentum,
            batch_size=50,
            max_epochs=15,
            early_stopping=False,
        )

        def snapshot(epoch, metrics, model=model, zeros=zeros):
            zeros.append(torch.cat([w.detach().flatten() == 0 for w in decay_parameters(model)]))

        runs[method] = (fit(model, splits, cfg, seed=0, on_epoch=snapshot), zeros)
    result, zeros = runs["proximal"]
    assert result.final["kept_exact_zeros"] > 0.3
    assert result.final["kept_exact_zeros"] == pytest.approx(float(zeros[-1].float().mean()))
    lasting = zeros[-6].clone()
    for later in zeros[-5:]:
        lasting &= later
    # Most weights at 0 five epochs before the end were at 0 at every epoch since.
    assert lasting.sum() >= 0.85 * zeros[-6].sum() > 0
    assert runs["subgradient"][0].final["kept_exact_zeros"] == 0.0


def test_test_curve_is_opt_in_and_never_seen_during_training(splits):
    cfg = TrainConfig(max_epochs=4, patience=1, lr=5e-2, batch_size=50)
    seen = []
    plain = fit(mlp(), splits, cfg, seed=0)
    model = mlp()
    snapshots = []

    def watch(epoch, metrics):
        seen.append(dict(metrics))
        snapshots.append(copy.deepcopy(model.state_dict()))

    curved = fit(model, splits, cfg, seed=0, on_epoch=watch, test_curve=True)
    assert plain.test_curve == [] and len(curved.test_curve) == curved.stopped_epoch
    assert not any(key.startswith("test") for metrics in seen for key in metrics)
    assert not any(key.startswith("test/") for metrics in curved.history for key in metrics)
    assert curved.history == plain.history and curved.final == plain.final  # same run
    for epoch, state in enumerate(snapshots, start=1):
        probe = mlp()
        probe.load_state_dict(state)
        loss, acc = train_module.evaluate(probe, splits.x_test, splits.y_test).tolist()
        assert curved.test_curve[epoch - 1] == {
            "test/loss": pytest.approx(loss, rel=1e-6),
            "test/acc": pytest.approx(acc),
        }
    kept = curved.test_curve[curved.selected_epoch - 1]
    assert kept["test/acc"] == pytest.approx(curved.final["test_acc"])


# Issue 15: the L2 penalty and decoupled decay take the same steps under plain SGD


def float64_run(splits: Splits, **train) -> list[list[torch.Tensor]]:
    """Every parameter after each epoch of `fit`, in float64, for a tiny MLP."""
    wide = Splits(
        **{
            **splits.__dict__,
            **{k: getattr(splits, k).double() for k in ("x_train", "x_val", "x_test")},
        }
    )
    model = mlp().double()
    snapshots: list[list[torch.Tensor]] = []

    def keep(epoch, metrics):
        snapshots.append([p.detach().clone() for p in model.parameters()])

    cfg = TrainConfig(
        optimizer="sgd", lr=0.05, batch_size=10, max_epochs=10, early_stopping=False, **train
    )
    fit(model, wide, cfg, seed=0, on_epoch=keep)
    return snapshots


def test_l2_penalty_equals_decay_of_twice_its_strength_under_plain_sgd(splits):
    """w - lr (g + 2 l2 w) = (1 - lr wd) w - lr g when wd = 2 l2: the same step, in exact
    arithmetic, under SGD with momentum 0 and no clipping. 300 examples in batches of 10 for 10
    epochs: 300 steps through `fit` itself, compared after every epoch in float64, where the
    two orders of operations round apart by about 1e-16 per step."""
    penalized = float64_run(splits, momentum=0.0, l2=0.01)
    decayed = float64_run(splits, momentum=0.0, weight_decay=0.02)
    plain = float64_run(splits, momentum=0.0)
    assert len(penalized) == len(decayed) == 10
    for epoch, (a, b, c) in enumerate(zip(penalized, decayed, plain, strict=True), start=1):
        for x, y, z in zip(a, b, c, strict=True):
            assert x.dtype == torch.float64
            assert torch.allclose(x, y, rtol=0, atol=1e-12), epoch
            if x.ndim >= 2:  # the regularizer did act on the weight matrices
                assert (x - z).abs().max() > 1e-4, epoch
    # With momentum the penalty's gradient enters the velocity and the decay does not: the
    # equality is plain SGD's only.
    heavy = float64_run(splits, momentum=0.9, l2=0.01)
    light = float64_run(splits, momentum=0.9, weight_decay=0.02)
    assert (heavy[-1][0] - light[-1][0]).abs().max() > 1e-4


def test_prune_and_evaluate_only_when_asked_and_without_changing_the_run(splits):
    # Sweep trials leave it out (five test passes: a tenth of a short trial); the figures that
    # both runs have are the same bit for bit.
    cfg = TrainConfig(max_epochs=3, lr=1e-2, batch_size=50, early_stopping=False, l1=1e-3)
    torch.manual_seed(0)
    plain = fit(mlp(), splits, cfg, seed=0)
    torch.manual_seed(0)
    pruned = fit(mlp(), splits, cfg, seed=0, prune_evaluate=True)
    assert not any(key.startswith("pruned_") for key in plain.final)
    assert {f"pruned_test_acc/{label}" for label in PRUNE_THRESHOLDS} <= set(pruned.final)
    assert plain.final == {k: v for k, v in pruned.final.items() if not k.startswith("pruned_")}
