"""Issue 15: dropout's two forms (the lecture notes' and inverted) compute the same functions."""

from __future__ import annotations

import pytest
import torch

from studylib.models.mlp import MLP, MLPConfig, NotesDropout, notes_form, scaled_for_test


def inverted(p: float) -> MLP:
    torch.manual_seed(0)
    return MLP(MLPConfig(hidden=(32, 16, 8), dropout=p), 40, 10)


@pytest.mark.parametrize("p", [0.5, 0.75])
def test_converted_networks_are_equal_bit_for_bit(p):
    """W_inverted = (1 - p) W_notes: with 1 - p a power of two every scaling is exact in
    binary floating point, so the two forms agree bit for bit, in training under the same
    masks (same generator state) and at test time (the notes' weights scaled by 1 - p)."""
    net = inverted(p)
    notes = notes_form(net)
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    assert isinstance(notes.hidden[0][2], NotesDropout)
    # The notes' training weights are not the inverted net's: they differ by 1 / (1 - p).
    assert not torch.equal(notes.head.weight, net.head.weight)
    net.train(), notes.train()
    torch.manual_seed(7)
    a = net(x)
    torch.manual_seed(7)
    b = notes(x)
    assert torch.equal(a, b)
    torch.manual_seed(8)
    assert not torch.equal(net(x), a)  # other masks, another function: dropout was on
    net.eval()
    assert torch.equal(net(x), scaled_for_test(notes).eval()(x))
    # Evaluating the notes' net without the test-time scaling is the classic mistake: every
    # reader of a dropped unit sees 1 / (1 - p) times too much.
    assert not torch.allclose(notes.eval()(x), net(x))


def test_converted_networks_agree_to_rounding_at_any_rate():
    net, p = inverted(0.3), 0.3
    notes = notes_form(net)
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    a = net.train()(x)
    torch.manual_seed(7)
    b = notes.train()(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(net.eval()(x), scaled_for_test(notes).eval()(x), rtol=1e-5, atol=1e-6)
    assert p == notes.hidden[1][2].p


def test_a_residual_mlp_has_no_weight_conversion():
    torch.manual_seed(0)
    net = MLP(MLPConfig(hidden=(16, 16), dropout=0.5, residual=True), 40, 10)
    with pytest.raises(ValueError, match="residual"):
        notes_form(net)
