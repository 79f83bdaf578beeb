"""Calibration and dropout as an ensemble (lecture notes, "Dropout layer").

A net trained with dropout is, in the notes' view, an ensemble of the thinned nets its masks
pick. At test time it is usually scored by one deterministic pass with the weights scaled by
1 - p (or, with inverted dropout, as is: the same function). MC dropout (Gal and Ghahramani
2016) instead averages the softmax of many stochastic passes, the ensemble's own prediction.
`mc_dropout_figures` scores both on one split, on accuracy, loss and calibration:

- ECE, the expected calibration error: predictions binned by their confidence (the largest
  class probability) into ECE_BINS equal-width bins on [0, 1]; ECE = sum over bins of
  (share of examples in the bin) * |accuracy in the bin - mean confidence in the bin|.
  0 for a perfectly calibrated model.

Classification only: a sequence task's exact-match accuracy has no single confidence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ECE_BINS = 15  # the usual choice (Guo et al. 2017)


def expected_calibration_error(
    probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS
) -> torch.Tensor:
    """ECE of class probabilities `probs` (N, C) against labels `y` (N,), a device scalar."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).to(probs.dtype)
    # Bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of exactly 0 cannot
    # occur (the largest of C probabilities is at least 1 / C).
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.zeros(bins, dtype=probs.dtype, device=probs.device)
    count.index_add_(0, index, torch.ones_like(confidence))
    gap = torch.zeros_like(count).index_add_(0, index, correct - confidence)
    return gap.abs().sum() / len(y)


@torch.no_grad()
def mc_dropout_figures(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int
) -> dict[str, torch.Tensor]:
    """The single deterministic pass against the mean softmax of `passes` stochastic passes
    (dropout layers in training mode, everything else in eval mode), as device scalars:
    `test_ece` (single pass), `test_acc_mc`, `test_loss_mc` (negative log of the mean
    probability of the true class), `test_ece_mc`. Masks come from torch's global generator,
    which the run's seed fixed. The model's mode is put back."""
    was_training = model.training
    model.eval()
    single = F.softmax(model(x).float(), dim=1)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in dropouts:
        m.train()
    try:
        mean = torch.zeros_like(single)
        for _ in range(passes):
            mean += F.softmax(model(x).float(), dim=1)
        mean /= passes
    finally:
        model.train(was_training)
    true_prob = mean.gather(1, y.unsqueeze(1)).squeeze(1)
    return {
        "test_ece": expected_calibration_error(single, y),
        "test_acc_mc": (mean.argmax(dim=1) == y).float().mean(),
        "test_loss_mc": -true_prob.clamp_min(torch.finfo(mean.dtype).tiny).log().mean(),
        "test_ece_mc": expected_calibration_error(mean, y),
    }
