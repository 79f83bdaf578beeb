"""The gradient through time (`train.state_grads`) checked by hand on a one-unit tanh RNN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.models.rnn import RNNConfig
from studylib.train.gradients import state_gradients


def test_one_unit_tanh_rnn_matches_the_chain_rule_by_hand():
    # h_t = tanh(w h_{t-1} + u x_t + b), logits = a h_T + c, L = mean cross-entropy.
    # By hand: dL/dh_T = (softmax - onehot) a / B per example, and each step back multiplies
    # by w (1 - h_t^2); the norm is taken over the batch.
    torch.manual_seed(0)
    model = build_model(RNNConfig(cell="rnn", hidden=1, readout="last"), (6,), 2).double()
    w, u, a, c, b = 1.7, 0.9, np.array([1.3, -0.8]), np.array([0.1, -0.2]), 0.05
    with torch.no_grad():
        model.rnn.weight_hh_l0.fill_(w)
        model.rnn.weight_ih_l0.fill_(u)
        model.rnn.bias_ih_l0.fill_(b)
        model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(torch.tensor(a).view(2, 1))
        model.head.bias.copy_(torch.tensor(c))
    x = np.array([[0.5, -1.0, 0.3, 0.8, -0.2, 0.1], [-0.4, 0.2, 0.9, -0.7, 0.6, -0.3]])
    y = np.array([1, 0])

    batch, steps = x.shape
    h = np.zeros((batch, steps + 1))
    for t in range(steps):
        h[:, t + 1] = np.tanh(w * h[:, t] + u * x[:, t] + b)
    logits = h[:, -1:] * a + c
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    g = np.zeros((batch, steps))
    g[:, -1] = ((p - np.eye(2)[y]) @ a) / batch
    for t in range(steps - 1, 0, -1):
        g[:, t - 1] = g[:, t] * w * (1 - h[:, t + 1] ** 2)
    expected = np.sqrt((g**2).sum(axis=0))

    got = state_gradients(model, torch.tensor(x), torch.tensor(y))
    assert got == pytest.approx(expected.tolist(), rel=1e-10)
    # Not the fused kernel's output gradient: that would show only the last step.
    assert got[0] > 0 and not math.isclose(got[0], got[-1])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "mean", "flatten"])
def test_step_by_step_gives_the_fused_forward(cell, readout):
    torch.manual_seed(1)
    model = build_model(RNNConfig(cell=cell, hidden=8, layers=2, readout=readout), (40,), 10)
    model.eval()
    x = torch.randn(5, 40)
    logits, states = model.step_by_step(x)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
    assert len(states) == 40 and len(states[0]) == (2 if cell == "lstm" else 1)
    norms = state_gradients(model, x, torch.arange(5))
    assert len(norms) == 40 and all(n > 0 for n in norms)


def test_bidirectional_has_no_state_after_a_step():
    model = build_model(RNNConfig(cell="gru", hidden=4, bidirectional=True), (40,), 10)
    with pytest.raises(ValueError, match="one direction"):
        model.step_by_step(torch.randn(2, 40))


@pytest.mark.parametrize(
    "model", ['arch = "rnn"\nbidirectional = true', 'arch = "mlp"', 'arch = "transformer"']
)
def test_state_grads_need_a_one_directional_rnn(tmp_path, model):
    path = tmp_path / "x.toml"
    path.write_text(f"[model]\n{model}\n[train]\nstate_grads = true\n")
    with pytest.raises(ConfigError, match="train.state_grads = true: .* one-directional rnn"):
        load_experiment(path)
