"""Training: one device-agnostic loop with the study's regularizers and early stopping.

Regularizers (lecture notes, "Weight regularization" and "Dropout layer"):
- L1 penalty  l1 * sum |w|    and  L2 penalty  l2 * sum w^2,  added to the loss;
- decoupled weight decay  w <- w - lr * weight_decay * w,  applied before each optimizer step
  (the rule of torch.optim.AdamW, applied the same way for every optimizer, so `weight_decay`
  never passes through Adam's moment estimates and stays distinct from the L2 penalty);
- dropout lives in the model;
- early stopping on validation loss, restoring the best weights.
Gradients (lecture notes, "Vanishing and Exploding gradients"): `grad_clip` rescales the
gradient whenever its global norm exceeds the limit (torch.nn.utils.clip_grad_norm_);
`grad_norms` logs each layer's gradient norm before clipping, averaged over the epoch's batches,
as `grad_norm/<layer>` (and `grad_norm/total`), so vanishing and exploding gradients show in MLflow.
Penalties and decay act on weight matrices and kernels only (parameters with two or more
dimensions): biases and normalization scales are left alone, as is customary, because they
do not scale a unit's input and shrinking them does not simplify the function.

Speed: the data are tensors on the device; batches are index slices of a random permutation;
per-epoch figures accumulate on the device and are read back once per epoch (one host sync);
evaluation runs without autograd; the penalties' gradient is added in fused kernels over all
weight tensors, outside autograd; the optimizer is torch's fused kernel; nothing inside an
epoch talks to MLflow or Optuna (`on_epoch` runs once per epoch). Optional: bf16 autocast and
torch.compile (`Speed`); TF32 matmuls on CUDA.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from studylib.config import DEFAULT_SPEED, Speed, TrainConfig
from studylib.data import Splits
from studylib.stopping import comparison_rules, make_rule, stop_epochs
from studylib.tasks import TASKS

SPARSITY_THRESHOLD = 1e-3  # |w| below this counts as zero in `weights/sparsity`
EVAL_BATCH = 8192

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    history: list[dict[str, float]]  # one dict of metrics per epoch, epoch 1 first
    best_epoch: int  # epoch of the lowest validation loss (0 if none was finite)
    stopped_epoch: int  # last epoch trained
    selected_epoch: int  # whose weights were kept: best_epoch with early stopping, else last
    status: str  # "completed", "early_stopped" or "diverged"
    reason: str
    final: dict[str, float] = field(default_factory=dict)  # metrics of the kept weights
    state_dict: dict[str, torch.Tensor] | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    if name == "cuda":
        enable_tf32()
    return torch.device(name)


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions (Ampere and later GPUs).

    A 10-bit mantissa inside the matmul, float32 everywhere else: the rounding is far below
    the seed-to-seed spread of any figure this study reports.
    """
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the API of torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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


def make_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `params`: one fused kernel per step on CPU and CUDA.

    weight_decay is applied by `fit` itself (decoupled), so every optimizer gets 0 here.
    """
    params = [p for p in params if p.requires_grad]
    fused = params[0].device.type in ("cpu", "cuda") or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=fused)


def autocast_context(device: torch.device, speed: Speed) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes when asked for; a no-op context otherwise."""
    if speed.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classify"
) -> torch.Tensor:
    """(mean cross-entropy, accuracy) as one device tensor of shape (2,); eval mode, no penalty.

    The same function scores train, validation and test, so their gap compares like with like.
    The task (studylib/tasks.py) says what the loss is averaged over and what counts as correct.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=x.device)  # summed loss, its units, correct examples
    for start in range(0, len(y), EVAL_BATCH):
        sums += TASKS[task].score(
            model, x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        )
    model.train(was_training)
    return torch.stack([sums[0] / sums[1], sums[2] / len(y)])


@torch.no_grad()
def weight_stats(weights: list[torch.Tensor]) -> torch.Tensor:
    """(global L2 norm, fraction of |w| below SPARSITY_THRESHOLD) as one device tensor.

    All weights as one flat vector: six operations whatever the depth (on a GPU each is a
    kernel launch, and per-tensor loops cost more than the arithmetic).
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    small = (flat.abs() < SPARSITY_THRESHOLD).float().mean()
    return torch.stack([torch.linalg.vector_norm(flat), small])


def epoch_metrics(
    objective: float,
    train_loss: float,
    train_acc: float,
    val_loss: float,
    val_acc: float,
    norm: float,
    sparsity: float,
    lr: float,
) -> dict[str, float]:
    """One epoch's logged figures; sequential and population training name them alike."""
    return {
        "train/loss": train_loss,
        "train/acc": train_acc,
        "val/loss": val_loss,
        "val/acc": val_acc,
        "gap/loss": val_loss - train_loss,
        "gap/acc": train_acc - val_acc,
        "train/objective": objective,
        "weights/l2_norm": norm,
        "weights/sparsity": sparsity,
        "lr": lr,
    }


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    seed: int,
    on_epoch: EpochCallback | None = None,
    speed: Speed = DEFAULT_SPEED,
) -> TrainResult:
    """Train `model` (already on the splits' device) and score the kept weights on test once.

    `on_epoch(epoch, metrics)` sees each epoch's figures; it may raise (optuna.TrialPruned, say)
    to end training early, and the exception propagates after the loop stops.
    Seeds: `seed` fixes the batch order here; the caller seeds init and dropout masks.
    """
    device = splits.x_train.device
    task = TASKS[splits.task]
    order = torch.Generator(device=device).manual_seed(seed)
    optimizer = make_optimizer(cfg, list(model.parameters()))
    # `forward` computes; `model` owns the parameters and the state dict (a compiled module
    # shares them and prefixes their names).
    forward = torch.compile(model) if speed.compile else model
    autocast = autocast_context(device, speed)
    weights = decay_parameters(model)
    penalties = PenaltyMeter(weights, cfg.l1, cfg.l2)
    decay_factor = 1.0 - cfg.lr * cfg.weight_decay
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norms = GradNorms(model, device) if cfg.grad_norms else None
    n = len(splits.y_train)

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    rule = make_rule(
        cfg.stopping,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        gl_alpha=cfg.gl_alpha,
        pq_alpha=cfg.pq_alpha,
        up_strips=cfg.up_strips,
        strip=cfg.strip_length,
    )
    status, reason = "completed", f"trained all {cfg.max_epochs} epochs"

    model.train()
    for epoch in range(1, cfg.max_epochs + 1):
        objective_sum = splits.x_train.new_zeros((), dtype=torch.float32)
        perm = torch.randperm(n, device=device, generator=order)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            with autocast:
                loss = task.loss(forward, splits.x_train[idx], splits.y_train[idx]).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.l1 or cfg.l2:
                # The gradient of `loss + penalty(...)`, added outside autograd.
                add_penalty_gradients(weights, cfg.l1, cfg.l2)
                penalties.add(len(idx))
            if grad_norms is not None:
                grad_norms.add()  # before clipping: the gradient the loss really has
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip, foreach=True)
            if cfg.weight_decay:
                with torch.no_grad():
                    torch._foreach_mul_(weights, decay_factor)
            optimizer.step()
            objective_sum.add_(loss.detach(), alpha=len(idx))

        # One host sync per epoch: every figure is computed on the device, then read at once.
        with autocast:
            train_figures = evaluate(forward, splits.x_train, splits.y_train, splits.task)
            val_figures = evaluate(forward, splits.x_val, splits.y_val, splits.task)
        if cfg.l1 or cfg.l2:
            objective_sum += penalties.take()
        parts = [(objective_sum / n).reshape(1), train_figures, val_figures, weight_stats(weights)]
        if grad_norms is not None:
            parts.append(grad_norms.epoch_means())
        figures = torch.cat(parts).tolist()
        metrics = epoch_metrics(*figures[:7], lr=optimizer.param_groups[0]["lr"])
        objective, train_loss, val_loss = figures[0], figures[1], figures[3]
        if grad_norms is not None:
            metrics.update(zip(grad_norms.names, figures[7:], strict=True))
        if not all(math.isfinite(v) for v in (objective, train_loss, val_loss)):
            status, reason = "diverged", f"non-finite loss at epoch {epoch} (objective {objective})"
            history.append({k: v for k, v in metrics.items() if math.isfinite(v)})
            break
        history.append(metrics)

        if val_loss < best_loss - cfg.min_delta:
            best_loss, best_epoch = val_loss, epoch
            if cfg.early_stopping:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        should_stop = rule.update(train_loss, val_loss)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if cfg.early_stopping and should_stop:
            status, reason = "early_stopped", f"rule {rule.name} stopped after epoch {epoch}"
            break

    stopped_epoch = len(history)
    result = TrainResult(
        history=history,
        best_epoch=best_epoch,
        stopped_epoch=stopped_epoch,
        selected_epoch=best_epoch if cfg.early_stopping else stopped_epoch,
        status=status,
        reason=reason,
    )
    if status == "diverged":
        return result
    if best_state is not None:
        model.load_state_dict(best_state)
    # The only time the test split is touched: the kept weights, scored once.
    with autocast:
        test_loss, test_acc = evaluate(forward, splits.x_test, splits.y_test, splits.task).tolist()
    result.final = final_metrics(history, best_epoch, best_loss, result.selected_epoch, cfg)
    result.final.update(test_loss=test_loss, test_acc=test_acc)
    result.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return result


def final_metrics(
    history: list[dict[str, float]],
    best_epoch: int,
    best_loss: float,
    selected_epoch: int,
    cfg: TrainConfig | None = None,
) -> dict[str, float]:
    """A run's closing figures from its history (test scores are added by the caller).

    Shared by `fit` and population training, so a member logs exactly what a trial logs.
    With `cfg`, also the epoch at which each stopping rule would have stopped on these curves
    (`stop_epoch/<rule>`, 0: not within them).
    """
    kept = history[selected_epoch - 1]
    would_stop: dict[str, int] = {}
    if cfg is not None:
        rules = comparison_rules(cfg.patience, cfg.min_delta, cfg.strip_length)
        would_stop = stop_epochs(
            [m["train/loss"] for m in history], [m["val/loss"] for m in history], rules
        )
    return {
        "best_epoch": best_epoch,
        "stopped_epoch": len(history),
        "selected_epoch": selected_epoch,
        "best_val_loss": best_loss,
        "best_val_acc": history[best_epoch - 1]["val/acc"],
        "selected_val_loss": kept["val/loss"],
        "selected_val_acc": kept["val/acc"],
        "selected_train_loss": kept["train/loss"],
        "selected_train_acc": kept["train/acc"],
        "gap_loss": kept["gap/loss"],
        "gap_acc": kept["gap/acc"],
        "best_gap_loss": history[best_epoch - 1]["gap/loss"],
        "best_gap_acc": history[best_epoch - 1]["gap/acc"],
        "final_l2_norm": history[-1]["weights/l2_norm"],
        "final_sparsity": history[-1]["weights/sparsity"],
        **{f"stop_epoch/{name}": epoch for name, epoch in would_stop.items()},
    }
