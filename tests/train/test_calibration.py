"""Issue 15: ECE by hand, and MC dropout against the single pass."""

from __future__ import annotations

import pytest
import torch

from studylib.models.mlp import MLP, MLPConfig
from studylib.train.calibration import expected_calibration_error, mc_dropout_figures


def test_ece_equals_a_hand_computation():
    probs = torch.tensor(
        [
            [0.9, 0.1],  # confidence 0.9, correct     -> bin (13/15, 14/15]
            [0.95, 0.05],  # confidence 0.95, wrong    -> bin (14/15, 1]
            [0.4, 0.6],  # confidence 0.6, correct     -> bin (8/15, 9/15]
            [0.3, 0.7],  # confidence 0.7, wrong       -> bin (10/15, 11/15]
        ]
    )
    y = torch.tensor([0, 1, 1, 0])
    # Four bins of one example each: (|1 - 0.9| + |0 - 0.95| + |1 - 0.6| + |0 - 0.7|) / 4
    expected = (0.1 + 0.95 + 0.4 + 0.7) / 4
    assert expected_calibration_error(probs, y).item() == pytest.approx(expected)
    # Two examples sharing a bin average before the absolute value: 0.9 correct and 0.9 wrong
    # are calibrated on average (accuracy 0.5 against confidence 0.9: |0.5 - 0.9| = 0.4).
    both = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(both, torch.tensor([0, 1])).item() == pytest.approx(0.4)
    # The largest probability exactly 1, correct: bin 15, no error.
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item() == 0


def test_mc_dropout_equals_the_single_pass_without_dropout_and_differs_with_it():
    x = torch.randn(200, 40, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = MLP(MLPConfig(hidden=(32,), dropout=0.0), 40, 10).eval()
    figures = mc_dropout_figures(plain, x, y, passes=5)
    logits = plain(x)
    single_acc = (logits.argmax(1) == y).float().mean()
    assert figures["test_acc_mc"].item() == pytest.approx(single_acc.item())
    assert figures["test_ece_mc"].item() == pytest.approx(figures["test_ece"].item(), abs=1e-6)
    nll = torch.nn.functional.cross_entropy(logits, y)
    assert figures["test_loss_mc"].item() == pytest.approx(nll.item(), rel=1e-5)

    torch.manual_seed(0)
    dropped = MLP(MLPConfig(hidden=(32,), dropout=0.5), 40, 10).train()
    figures = mc_dropout_figures(dropped, x, y, passes=20)
    assert dropped.training  # the mode is put back
    assert figures["test_ece_mc"].item() != pytest.approx(figures["test_ece"].item(), abs=1e-6)
