"""The penalties and decay of the lecture notes ("Weight regularization"), as fused kernels.

- L1 penalty  l1 * sum |w|    and  L2 penalty  l2 * sum w^2,  added to the loss (their gradient
  is added outside autograd, `add_penalty_gradients`);
- L1 as a proximal step instead (`train.l1_method = "proximal"`, `proximal_l1_step`): after the
  optimizer's step, soft-thresholding w <- sign(w) max(|w| - tau, 0). The subgradient l1 sign(w)
  makes a weight oscillate around 0 and almost never land on it; the proximal step sets every
  weight that the step would carry across 0 to exactly 0, and keeps it there while the loss's
  own pull stays weaker than l1. tau is the step the optimizer would take on the penalty: SGD
  (ISTA) tau = lr * l1; Adam and AdamW tau = lr * l1 / (sqrt(v_hat) + eps), preconditioned like
  Adam's step, with v_hat its bias-corrected second moment (a weight at 0 then stays at 0 while
  |m_hat| <= l1, the optimality condition of the L1 problem in Adam's metric);
- decoupled weight decay  w <- w - lr * weight_decay * w,  applied by the loop before each step;
- weight statistics (norm, sparsity) that show what they did, per epoch and of the kept weights,
  and prune-and-evaluate: the kept weights with every |w| below a threshold set to 0.
They act on weight matrices and kernels only (parameters with two or more dimensions): biases
and normalization scales are left alone, as is customary, because they do not scale a unit's
input and shrinking them does not simplify the function.
"""

from __future__ import annotations

import torch
from torch import nn

SPARSITY_THRESHOLD = 1e-3  # |w| below this counts as zero in `weights/sparsity`
# Thresholds of the kept weights' sparsity (`kept_sparsity/<label>`) and of prune-and-evaluate
# (`pruned_test_acc/<label>`), largest first. The per-epoch 1e-3 is the Adam step size at the
# default learning rate: below it a weight is not told apart from one oscillating around 0.
PRUNE_THRESHOLDS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4, "1e-5": 1e-5, "1e-6": 1e-6}


def decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weight matrices and kernels: what the penalties and weight decay act on."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


def penalty(weights: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """l1 * sum |w| + l2 * sum w^2, fused over all weight tensors (no per-parameter loop).

    Training adds its gradient directly (`add_penalty_gradients`); this is its value.
    """
    total = weights[0].new_zeros(())
    if l1:
        total = total + l1 * torch.stack(torch._foreach_norm(weights, 1)).sum()
    if l2:
        total = total + l2 * torch.stack(torch._foreach_norm(weights, 2)).square().sum()
    return total


@torch.no_grad()
def add_penalty_gradients(weights: list[torch.Tensor], l1: float, l2: float) -> None:
    """Add the penalty's gradient, l1 * sign(w) + 2 * l2 * w, to each weight's .grad.

    The gradient autograd would give for `loss + penalty(...)`, in fused kernels and without
    a graph: on the default MLP the penalty cost 0.4 ms of a 1.7 ms step through autograd.
    """
    for w in weights:
        if w.grad is None:  # a weight the batch did not reach still feels the penalty
            w.grad = torch.zeros_like(w)
    grads = [w.grad for w in weights]
    if l1:
        torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=l1)
    if l2:
        torch._foreach_add_(grads, weights, alpha=2 * l2)


class PenaltyMeter:
    """The penalty's value summed over an epoch's batches (for `train/objective`).

    Two fused kernels a batch, read once per epoch: per-weight sums of |w| and of w^2 as each
    batch saw them, weighted by the batch's size.
    """

    def __init__(self, weights: list[torch.Tensor], l1: float, l2: float):
        self.weights, self.l1, self.l2 = weights, l1, l2
        self.l1_sums = [w.new_zeros(()) for w in weights]
        self.l2_sums = [w.new_zeros(()) for w in weights]

    @torch.no_grad()
    def add(self, count: int) -> None:
        if self.l1:
            torch._foreach_add_(self.l1_sums, torch._foreach_norm(self.weights, 1), alpha=count)
        if self.l2:
            norms = torch._foreach_norm(self.weights, 2)
            torch._foreach_addcmul_(self.l2_sums, norms, norms, value=count)

    def take(self) -> torch.Tensor:
        """The sum since the last take, as a device scalar; starts a new sum."""
        l1_sum, l2_sum = torch.stack(self.l1_sums).sum(), torch.stack(self.l2_sums).sum()
        total = self.l1 * l1_sum + self.l2 * l2_sum
        torch._foreach_zero_(self.l1_sums + self.l2_sums)
        return total


@torch.no_grad()
def proximal_l1_step(
    optimizer: torch.optim.Optimizer,
    weights: list[torch.Tensor],
    scaled: list[float | torch.Tensor],
) -> None:
    """Soft-threshold each weight after `optimizer.step()`: w <- w - clamp(w, -tau, tau).

    `scaled[i]` is lr * l1 for weights[i]: a number, or a tensor that broadcasts against it
    (population training: one value per member). SGD: tau = lr * l1 (ISTA). Adam / AdamW:
    tau = lr * l1 / (sqrt(v / (1 - beta2^t)) + eps), from the optimizer's public state
    (`exp_avg_sq`, `step`), the denominator of Adam's own step. A weight within tau of 0
    becomes exactly 0 (w - w).
    """
    group = optimizer.param_groups[0]
    adam = "betas" in group
    for w, scale in zip(weights, scaled, strict=True):
        # As a tensor, so that `fit` and population training round alike; filled on the
        # device (a tensor made from a host number is a copy: on CUDA, a host sync per step).
        tau = scale if torch.is_tensor(scale) else w.new_full((), scale)
        if not adam and group["momentum"]:
            tau = tau / (1 - group["momentum"])
        if adam:
            state = optimizer.state.get(w)
            if not state:  # not stepped yet (no gradient reached it): nothing to precondition
                continue
            step = torch.as_tensor(state["step"], dtype=w.dtype, device=w.device)
            correction = (1 - group["betas"][1] ** step).sqrt()
            tau = tau / (state["exp_avg_sq"].sqrt() / correction + group["eps"])
        w.sub_(torch.clamp(w, -tau, tau))


@torch.no_grad()
def kept_weight_stats(weights: list[torch.Tensor]) -> torch.Tensor:
    """(global L2 norm, share of entries exactly 0, share with |w| below each PRUNE_THRESHOLDS
    value) of these weights, as one device tensor: what the kept weights look like."""
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    size = flat.abs()
    shares = [(flat == 0).float().mean()]
    shares += [(size < t).float().mean() for t in PRUNE_THRESHOLDS.values()]
    return torch.stack([torch.linalg.vector_norm(flat), *shares])


def kept_weight_names() -> list[str]:
    """The final metric names of `kept_weight_stats`, in its order."""
    return ["kept_l2_norm", "kept_exact_zeros"] + [
        f"kept_sparsity/{label}" for label in PRUNE_THRESHOLDS
    ]


@torch.no_grad()
def weight_stats(weights: list[torch.Tensor]) -> torch.Tensor:
    """(global L2 norm, fraction of |w| below SPARSITY_THRESHOLD) as one device tensor.

    All weights as one flat vector: six operations whatever the depth (on a GPU each is a
    kernel launch, and per-tensor loops cost more than the arithmetic).
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    small = (flat.abs() < SPARSITY_THRESHOLD).float().mean()
    return torch.stack([torch.linalg.vector_norm(flat), small])
