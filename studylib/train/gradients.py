"""Gradient norms per layer (lecture notes, "Vanishing and Exploding gradients").

`grad_norms` logs each layer's gradient norm before clipping, averaged over the epoch's
batches, as `grad_norm/<layer>` (and `grad_norm/total`), so vanishing and exploding gradients
show in MLflow; summed on the device and read once per epoch.

Through time (`state_grads`, recurrent nets): the norm of the loss's gradient with respect to
the state after each step, ||dL/dh_t||, on one fixed batch, off the training loop. A tanh RNN
multiplies it by W^T diag(1 - h^2) per step back, so it falls geometrically towards early
steps when those factors are below 1; the LSTM's cell path multiplies by the forget gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters per layer for `grad_norm/<layer>`: the model's own `grad_groups()` if it has
    one (the RNN splits by layer and direction), else the module path up to the first list
    index: "hidden.0" (MLP), "blocks.2" (CNN), "layers.1" (Transformer), "head"."""
    own = getattr(model, "grad_groups", None)
    if callable(own):
        return own()
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key: list[str] = []
        for part in name.split(".")[:-1] or [name]:  # drop ".weight" / ".bias"
            key.append(part)
            if part.isdigit():
                break
        groups.setdefault(".".join(key), []).append(param)
    return groups


class GradNorms:
    """Per-layer gradient norms summed over an epoch's batches, on the device (no host sync)."""

    def __init__(self, model: nn.Module, device: torch.device):
        groups = grad_groups(model)
        self.names = [f"grad_norm/{name}" for name in groups] + ["grad_norm/total"]
        self.params = [p for params in groups.values() for p in params]
        index = [i for i, params in enumerate(groups.values()) for _ in params]
        self.index = torch.tensor(index, device=device)
        self.squares = torch.zeros(len(groups), device=device)
        self.sums = torch.zeros(len(groups) + 1, device=device)
        self.zero = torch.zeros((), device=device)
        self.batches = 0

    def add(self) -> None:
        """After backward: each layer's norm sqrt(sum of its parameters' squared grad norms)."""
        grads = [self.zero if p.grad is None else p.grad for p in self.params]
        squared = torch.stack(torch._foreach_norm(grads)).square()
        self.squares.zero_().index_add_(0, self.index, squared)
        self.sums[:-1] += self.squares.sqrt()
        self.sums[-1] += self.squares.sum().sqrt()
        self.batches += 1

    def epoch_means(self) -> torch.Tensor:
        means = self.sums / max(self.batches, 1)
        self.sums = torch.zeros_like(self.sums)
        self.batches = 0
        return means


def state_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||dL/d state_t|| for t = 1..T: L the mean cross-entropy of the batch (x, y) in eval mode
    (no dropout), the state (h_t) or (h_t, c_t) of every layer, the norm over the whole batch's
    gradient. `model` must have `step_by_step` (models/rnn.py). One host read."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits, states = model.step_by_step(x)
            flat = [part for state in states for part in state]
            grads = torch.autograd.grad(F.cross_entropy(logits, y), flat, allow_unused=True)
    finally:
        model.train(was_training)
    squares = [torch.zeros((), device=x.device) if g is None else g.square().sum() for g in grads]
    per_step = len(states[0])
    steps = torch.stack(squares).view(len(states), per_step).sum(dim=1).sqrt()
    return steps.tolist()
