from __future__ import annotations

import pytest
import torch
from torch import sigmoid, tanh

from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.models.rnn import RNNConfig


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "mean", "max", "flatten"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes_on_mnist1d_and_digits(cell, readout, bidirectional):
    for input_shape, patch in (((40,), 1), ((40,), 4), ((8, 8), 1), ((8, 8), 2)):
        cfg = RNNConfig(
            cell=cell,
            hidden=5,
            layers=2,
            bidirectional=bidirectional,
            readout=readout,
            patch=patch,
            dropout=0.2,
        )
        model = build_model(cfg, input_shape, 10)
        steps = input_shape[0] // patch
        assert model.rnn.input_size == patch * (input_shape[1] if len(input_shape) == 2 else 1)
        width = 5 * (2 if bidirectional else 1)
        assert model.head.in_features == width * (steps if readout == "flatten" else 1)
        assert model(torch.randn(3, *input_shape)).shape == (3, 10)


def one_step(cell: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(RNNConfig(cell=cell, hidden=4), (1,), 10)  # one step of one scalar
    return model.rnn, torch.randn(3, 1, 1), torch.randn(1, 3, 4)


def test_vanilla_rnn_is_tanh_of_w_h_plus_u_x():
    rnn, x, h0 = one_step("rnn")
    out, _ = rnn(x, h0)
    W, U = rnn.weight_hh_l0, rnn.weight_ih_l0
    expected = tanh(h0[0] @ W.T + x[:, 0] @ U.T + rnn.bias_hh_l0 + rnn.bias_ih_l0)
    assert torch.allclose(out[:, 0], expected, atol=1e-6)


def test_lstm_step_follows_the_lecture_equations():
    rnn, x, h0 = one_step("lstm")
    c0 = torch.randn_like(h0)
    out, (h1, c1) = rnn(x, (h0, c0))
    # torch stacks the four gates' weights in the order input, forget, cell, output.
    U = dict(zip("ifco", rnn.weight_ih_l0.chunk(4), strict=True))
    W = dict(zip("ifco", rnn.weight_hh_l0.chunk(4), strict=True))
    b = dict(zip("ifco", (rnn.bias_ih_l0 + rnn.bias_hh_l0).chunk(4), strict=True))
    h, xt = h0[0], x[:, 0]

    def gate(g):
        return h @ W[g].T + xt @ U[g].T + b[g]

    f, i, o = sigmoid(gate("f")), sigmoid(gate("i")), sigmoid(gate("o"))
    c = f * c0[0] + i * tanh(gate("c"))
    assert torch.allclose(c1[0], c, atol=1e-6)
    assert torch.allclose(out[:, 0], o * tanh(c), atol=1e-6)


def test_gru_step_follows_its_equations():
    rnn, x, h0 = one_step("gru")
    out, _ = rnn(x, h0)
    Ur, Uz, Un = rnn.weight_ih_l0.chunk(3)
    Wr, Wz, Wn = rnn.weight_hh_l0.chunk(3)
    bir, biz, bin_ = rnn.bias_ih_l0.chunk(3)
    bhr, bhz, bhn = rnn.bias_hh_l0.chunk(3)
    h, xt = h0[0], x[:, 0]
    r = sigmoid(xt @ Ur.T + bir + h @ Wr.T + bhr)
    z = sigmoid(xt @ Uz.T + biz + h @ Wz.T + bhz)
    n = tanh(xt @ Un.T + bin_ + r * (h @ Wn.T + bhn))
    assert torch.allclose(out[:, 0], (1 - z) * n + z * h, atol=1e-6)


def test_bidirectional_state_is_forward_and_backward_concatenated():
    torch.manual_seed(1)
    model = build_model(RNNConfig(cell="gru", hidden=3, bidirectional=True), (6,), 10)
    x = torch.randn(2, 6, 1)
    states, _ = model.rnn(x)  # (B, T, 2H)
    forward = torch.nn.GRU(1, 3, batch_first=True)
    backward = torch.nn.GRU(1, 3, batch_first=True)
    with torch.no_grad():
        for name, param in forward.named_parameters():
            param.copy_(getattr(model.rnn, name))
            getattr(backward, name).copy_(getattr(model.rnn, f"{name}_reverse"))
    h_fwd, _ = forward(x)
    h_bwd, _ = backward(x.flip(1))
    assert torch.allclose(states[..., :3], h_fwd, atol=1e-6)
    assert torch.allclose(states[..., 3:], h_bwd.flip(1), atol=1e-6)  # h_t = [h_fwd; h_bwd]


def test_last_readout_reads_the_final_state_of_each_direction():
    torch.manual_seed(2)
    model = build_model(RNNConfig(hidden=3, layers=2, bidirectional=True), (6,), 10)
    captured = {}
    model.head.register_forward_hook(lambda _m, inputs, _o: captured.setdefault("in", inputs[0]))
    x = torch.randn(2, 6)
    model.eval()
    model(x)
    states, _ = model.rnn(x.unsqueeze(-1))
    expected = torch.cat([states[:, -1, :3], states[:, 0, 3:]], dim=-1)  # [h_fwd_T; h_bwd_1]
    assert torch.allclose(captured["in"], expected, atol=1e-6)


@pytest.mark.parametrize("readout", ["last", "mean", "max"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_steps_change_nothing(readout, cell):
    torch.manual_seed(3)
    model = build_model(
        RNNConfig(cell=cell, hidden=4, readout=readout, bidirectional=True), (8,), 10
    )
    model.eval()
    short = torch.randn(2, 5)
    padded = torch.cat([short, 100 * torch.randn(2, 3)], dim=1)  # 3 padded steps of junk
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 5:] = True
    assert torch.allclose(model(padded, mask), model(short), atol=1e-5)
    # Without the mask the junk does change the answer: the mask is what hides it.
    assert not torch.allclose(model(padded), model(short), atol=1e-3)


def test_dropout_acts_between_layers_and_before_the_classifier():
    deep = build_model(RNNConfig(layers=3, dropout=0.4), (40,), 10)
    assert deep.rnn.dropout == 0.4 and deep.dropout.p == 0.4
    shallow = build_model(RNNConfig(layers=1, dropout=0.4), (40,), 10)
    assert shallow.rnn.dropout == 0.0 and shallow.dropout.p == 0.4  # torch has no inter-layer


def test_gradient_groups_are_layers_and_directions():
    model = build_model(RNNConfig(layers=2, bidirectional=True), (40,), 10)
    groups = model.grad_groups()
    assert list(groups) == ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "head"]
    grouped = [id(p) for params in groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_patch_that_does_not_divide_the_sequence_is_a_config_error(tmp_path):
    path = tmp_path / "rnn.toml"
    path.write_text('name = "t"\n[model]\narch = "rnn"\npatch = 3\n')
    with pytest.raises(ConfigError, match=r"model.patch = 3 does not divide .* 40"):
        load_experiment(path)
