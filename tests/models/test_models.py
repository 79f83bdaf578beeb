from __future__ import annotations

import pytest
import torch

from studylib.models import build_model
from studylib.models.mlp import MLPConfig


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "identity"])
def test_mlp_shapes(activation):
    model = build_model(MLPConfig(hidden=(16, 8), activation=activation), (40,), 10)
    assert model(torch.randn(5, 40)).shape == (5, 10)


def test_depth_follows_widths_and_no_hidden_is_logistic_regression():
    model = build_model(MLPConfig(hidden=(16, 8)), (40,), 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(40, 16), (16, 8), (8, 10)]
    logistic = build_model(MLPConfig(hidden=()), (40,), 10)
    assert sum(p.numel() for p in logistic.parameters()) == 40 * 10 + 10


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(64,), dropout=0.5), (40,), 10)
    x = torch.randn(4, 40)
    model.train()
    assert not torch.equal(model(x), model(x))  # new masks each call
    model.eval()
    assert torch.equal(model(x), model(x))


def test_width_must_be_positive():
    with pytest.raises(ValueError):
        MLPConfig(hidden=(16, 0))


def test_residual_mlp_adds_its_input_back_after_the_first_layer():
    torch.manual_seed(0)
    cfg = MLPConfig(hidden=(8, 8), residual=True, activation="relu")
    model = build_model(cfg, (5,), 3)
    x = torch.randn(4, 5)
    h1 = model.hidden[0](x)
    expected = model.head(h1 + model.hidden[1](h1))  # h <- h + relu(W2 h + b2), the paper's MLP
    assert torch.allclose(model(x), expected)
    with pytest.raises(ValueError, match="equal hidden widths"):
        MLPConfig(hidden=(8, 4), residual=True)
