"""Training: one device-agnostic loop with the study's regularizers and early stopping.

Regularizers (lecture notes, "Weight regularization" and "Dropout layer"): the L1 and L2
penalties and decoupled weight decay (regularizers.py; decay is the rule of torch.optim.AdamW,
applied the same way for every optimizer, so `weight_decay` never passes through Adam's moment
estimates and stays distinct from the L2 penalty); dropout lives in the model; early stopping
on the monitored validation figure (`train.monitor`: loss, or error = 1 - accuracy) restores the
best weights (stopping.py); L1 is a subgradient of the penalty or a proximal step
(`train.l1_method`). Gradients (lecture notes,
"Vanishing and Exploding gradients"): `grad_clip` rescales the gradient whenever its global
norm exceeds the limit; `grad_norms` logs each layer's norm (gradients.py).

What happens after each epoch (record the figures, find the best epoch, ask the stopping rule,
end on divergence) is `EpochBook.step`: the one epoch step that `fit` and population training
(population.py) share, so a population member ends exactly where its sequential trial would.
What happens once training ends (the kept weights' test score, their norm and sparsity, and,
when asked, prune-and-evaluate) is `closing_figures`, also shared. Prune-and-evaluate scores the
test split five more times (about 10% of a 10-epoch MLP trial), so only the runs whose figures
the report reads ask for it: ablation arms and `studylib train` (`prune_evaluate=True`).

Test data: scored once, on the kept weights, after training. An ablation arm may ask for a test
curve too (`test_curve=True`): each epoch's test figures go into a device buffer (`TestCurve`)
that nothing reads until training has ended; they never enter the epoch's metrics, so the epoch
step, the stopping rule, `on_epoch` and Optuna cannot see them (tested by shuffling the test
labels: every selection comes out identical).

Speed: the data are tensors on the device; batches are index slices of a random permutation;
per-epoch figures accumulate on the device and are read back once per epoch (one host sync);
evaluation runs without autograd; the penalties' gradient is added in fused kernels over all
weight tensors, outside autograd; the optimizer is torch's fused kernel; nothing inside an
epoch talks to MLflow or Optuna (`on_epoch` runs once per epoch). Optional: bf16 autocast and
torch.compile (`Speed`); TF32 matmuls on CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from studylib.config import DEFAULT_SPEED, Speed, TrainConfig
from studylib.data import Splits
from studylib.train.calibration import mc_dropout_figures
from studylib.train.device import autocast_context
from studylib.train.gradients import GradNorms, state_gradients
from studylib.train.regularizers import (
    PRUNE_THRESHOLDS,
    PenaltyMeter,
    add_penalty_gradients,
    decay_parameters,
    kept_weight_names,
    kept_weight_stats,
    proximal_l1_step,
    weight_stats,
)
from studylib.train.stopping import StoppingRule, comparison_rules, make_rule, stop_epochs
from studylib.train.tasks import TASKS

EVAL_BATCH = 8192
STATE_GRAD_BATCH = 100  # `state_grads`: the first this many training examples, a fixed batch

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
    seconds: float = 0.0  # wall time of `fit`, epoch callbacks included (0: not measured)
    # Per epoch {"test/loss", "test/acc"}, epoch 1 first; only when asked for (`test_curve`),
    # read from its buffer after training ended.
    test_curve: list[dict[str, float]] = field(default_factory=list)


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


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classify"
) -> torch.Tensor:
    """(mean cross-entropy, accuracy) as one device tensor of shape (2,); eval mode, no penalty.

    The same function scores train, validation and test, so their gap compares like with like.
    The task (tasks.py) says what the loss is averaged over and what counts as correct.
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


@dataclass
class Ending:
    status: str  # "completed", "early_stopped" or "diverged"
    reason: str


def monitored(metrics: dict[str, float], split: str, monitor: str) -> float:
    """The figure early stopping watches on `split` ("train" or "val"): its loss, or its error
    1 - accuracy (`train.monitor` = "val_loss" or "val_error")."""
    if monitor == "val_error":
        return 1.0 - metrics[f"{split}/acc"]
    return metrics[f"{split}/loss"]


class EpochBook:
    """One run's bookkeeping after each epoch, on the host: its history, best epoch, stopping
    rule and how it ends. `fit` keeps one; population training keeps one per member.

    The best epoch and the stopping rule watch the monitored figure (`monitored`)."""

    def __init__(self, cfg: TrainConfig, validates: bool = True):
        self.cfg = cfg
        # False: no validation split (data.val_fraction = 0, config.py allows it only for runs
        # that select nothing): no val/* figures, and the "best" epoch is simply the last.
        self.validates = validates
        self.history: list[dict[str, float]] = []
        self.best_value = math.inf  # of the monitored figure
        self.best_epoch = 0
        self.rule: StoppingRule = make_rule(
            cfg.stopping,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            gl_alpha=cfg.gl_alpha,
            pq_alpha=cfg.pq_alpha,
            up_strips=cfg.up_strips,
            strip=cfg.strip_length,
        )
        self.has_best_state = False  # weights of the best epoch were kept (early stopping)

    def step(self, epoch: int, metrics: dict[str, float]) -> tuple[bool, Ending | None]:
        """Record epoch `epoch`'s figures. Returns (keep these weights as the best so far, how
        the run ends after this epoch or None). A diverged epoch records its finite figures."""
        objective, train_loss = metrics["train/objective"], metrics["train/loss"]
        checked = (objective, train_loss, metrics["val/loss"] if self.validates else 0.0)
        if not all(math.isfinite(v) for v in checked):
            self.history.append({k: v for k, v in metrics.items() if math.isfinite(v)})
            reason = f"non-finite loss at epoch {epoch} (objective {objective})"
            return False, Ending("diverged", reason)
        self.history.append(metrics)
        keep = False
        if not self.validates:
            self.best_epoch = epoch
            if epoch >= self.cfg.max_epochs:
                return False, Ending("completed", f"trained all {self.cfg.max_epochs} epochs")
            return False, None
        watched = monitored(metrics, "val", self.cfg.monitor)
        if watched < self.best_value - self.cfg.min_delta:
            self.best_value, self.best_epoch = watched, epoch
            keep = self.cfg.early_stopping
            self.has_best_state = self.has_best_state or keep
        should_stop = self.rule.update(monitored(metrics, "train", self.cfg.monitor), watched)
        if self.cfg.early_stopping and should_stop:
            return keep, Ending(
                "early_stopped", f"rule {self.rule.name} stopped after epoch {epoch}"
            )
        if epoch >= self.cfg.max_epochs:
            return keep, Ending("completed", f"trained all {self.cfg.max_epochs} epochs")
        return keep, None

    @property
    def selected_epoch(self) -> int:
        """Whose weights are kept: the best epoch's with early stopping, else the last one's."""
        return self.best_epoch if self.cfg.early_stopping else len(self.history)

    def result(self, ending: Ending, closing: dict[str, float] | None = None) -> TrainResult:
        """The run's TrainResult; `closing` (`closing_figures` of the kept weights) when not
        diverged."""
        result = TrainResult(
            history=self.history,
            best_epoch=self.best_epoch,
            stopped_epoch=len(self.history),
            selected_epoch=self.selected_epoch,
            status=ending.status,
            reason=ending.reason,
        )
        if ending.status != "diverged" and closing is not None:
            result.final = final_metrics(
                self.history, self.best_epoch, self.selected_epoch, self.cfg
            )
            result.final.update(closing)
        return result


class TestCurve:
    """Each epoch's test (loss, accuracy), kept on the device and read only after training.

    `record` queues the figures into a preallocated buffer (no host sync); `read` is called
    once training has ended. Nothing else holds the buffer: selection cannot see it.
    """

    def __init__(self, epochs: int, device: torch.device):
        self._figures = torch.full((epochs, 2), math.nan, device=device)

    def record(self, epoch: int, figures: torch.Tensor) -> None:
        self._figures[epoch - 1] = figures

    def read(self, epochs: int) -> list[dict[str, float]]:
        rows = self._figures[:epochs].tolist()
        return [{"test/loss": loss, "test/acc": acc} for loss, acc in rows]


@torch.no_grad()
def closing_figures(
    model: nn.Module, weights: list[torch.Tensor], splits: Splits, prune: bool = False
) -> dict[str, float]:
    """The kept weights' closing figures, read back in one host sync:
    - `test_loss`, `test_acc`: the test split, scored once;
    - `kept_l2_norm`, `kept_exact_zeros`, `kept_sparsity/<t>`: the weight matrices' norm, share
      of entries exactly 0, and share with |w| < t for t in PRUNE_THRESHOLDS;
    - with `prune`, `pruned_test_loss/<t>`, `pruned_test_acc/<t>`: prune-and-evaluate, the test
      figures with every weight-matrix entry |w| < t set to 0 (biases untouched).
    `weights` are `model`'s weight matrices: pruned in place, then restored exactly.
    Shared by `fit` and population training, so a member closes as its sequential trial does.
    """
    parts = [evaluate(model, splits.x_test, splits.y_test, splits.task)]
    parts.append(kept_weight_stats(weights))
    if prune:
        saved = [w.detach().clone() for w in weights]
        # Smallest threshold first: each prunes a superset of what the one before pruned.
        for threshold in sorted(PRUNE_THRESHOLDS.values()):
            for w in weights:
                w.masked_fill_(w.abs() < threshold, 0.0)
            parts.append(evaluate(model, splits.x_test, splits.y_test, splits.task))
        for w, kept in zip(weights, saved, strict=True):
            w.copy_(kept)
    values = torch.cat(parts).tolist()
    figures = {"test_loss": values[0], "test_acc": values[1]}
    stats = kept_weight_names()
    figures.update(zip(stats, values[2 : 2 + len(stats)], strict=True))
    pruned = values[2 + len(stats) :]
    labels = sorted(PRUNE_THRESHOLDS, key=PRUNE_THRESHOLDS.__getitem__) if prune else []
    for index, label in enumerate(labels):
        figures[f"pruned_test_loss/{label}"] = pruned[2 * index]
        figures[f"pruned_test_acc/{label}"] = pruned[2 * index + 1]
    return figures


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    seed: int,
    on_epoch: EpochCallback | None = None,
    speed: Speed = DEFAULT_SPEED,
    test_curve: bool = False,
    prune_evaluate: bool = False,
) -> TrainResult:
    """Train `model` (already on the splits' device) and score the kept weights on test once.

    `on_epoch(epoch, metrics)` sees each epoch's figures; it may raise (optuna.TrialPruned, say)
    to end training early, and the exception propagates after the loop stops.
    Seeds: `seed` fixes the batch order here; the caller seeds init and dropout masks.
    `test_curve`: also score every epoch's weights on test, into `TrainResult.test_curve`, read
    only once training has ended (ablation arms: early stopping's regret needs it).
    `prune_evaluate`: also the kept weights' prune-and-evaluate figures (`closing_figures`).
    """
    started = time.perf_counter()
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
    proximal = cfg.l1 > 0 and cfg.l1_method == "proximal"
    l1_gradient = 0.0 if proximal else cfg.l1  # the proximal step replaces the subgradient
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norms = GradNorms(model, device) if cfg.grad_norms else None
    n = len(splits.y_train)
    validates = len(splits.y_val) > 0
    book = EpochBook(cfg, validates)
    # In order (`shuffle = false`, the MNIST-1D paper's batches): the same order every epoch.
    in_order = None if cfg.shuffle else torch.arange(n, device=device)
    probe = (splits.x_train[:STATE_GRAD_BATCH], splits.y_train[:STATE_GRAD_BATCH])
    # Off the hot path: one measurement before training and one of the kept weights.
    state_grads = {"init": state_gradients(model, *probe)} if cfg.state_grads else {}
    best_state = None
    tests = TestCurve(cfg.max_epochs, device) if test_curve else None

    model.train()
    for epoch in range(1, cfg.max_epochs + 1):
        objective_sum = splits.x_train.new_zeros((), dtype=torch.float32)
        perm = torch.randperm(n, device=device, generator=order) if in_order is None else in_order
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            with autocast:
                loss = task.loss(forward, splits.x_train[idx], splits.y_train[idx]).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.l1 or cfg.l2:
                # The gradient of `loss + penalty(...)`, added outside autograd.
                add_penalty_gradients(weights, l1_gradient, cfg.l2)
                penalties.add(len(idx))
            if grad_norms is not None:
                grad_norms.add()  # before clipping: the gradient the loss really has
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip, foreach=True)
            if cfg.weight_decay:
                with torch.no_grad():
                    torch._foreach_mul_(weights, decay_factor)
            optimizer.step()
            if proximal:
                lr = optimizer.param_groups[0]["lr"]
                proximal_l1_step(optimizer, weights, [lr * cfg.l1] * len(weights))
            objective_sum.add_(loss.detach(), alpha=len(idx))

        # One host sync per epoch: every figure is computed on the device, then read at once.
        with autocast:
            train_figures = evaluate(forward, splits.x_train, splits.y_train, splits.task)
            val_figures = (
                evaluate(forward, splits.x_val, splits.y_val, splits.task)
                if validates
                else torch.full((2,), math.nan, device=device)
            )
            if tests is not None:  # into the buffer: not part of this epoch's metrics
                tests.record(epoch, evaluate(forward, splits.x_test, splits.y_test, splits.task))
        if cfg.l1 or cfg.l2:
            objective_sum += penalties.take()
        parts = [(objective_sum / n).reshape(1), train_figures, val_figures, weight_stats(weights)]
        if grad_norms is not None:
            parts.append(grad_norms.epoch_means())
        figures = torch.cat(parts).tolist()
        metrics = epoch_metrics(*figures[:7], lr=optimizer.param_groups[0]["lr"])
        if not validates:  # nothing to log: there is no validation split
            metrics = {k: v for k, v in metrics.items() if not k.startswith(("val/", "gap/"))}
        if grad_norms is not None:
            metrics.update(zip(grad_norms.names, figures[7:], strict=True))

        keep, ending = book.step(epoch, metrics)
        if ending is not None and ending.status == "diverged":
            return book.result(ending)
        if keep:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if ending is not None:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    # The kept weights, scored once on test (with a test curve: the buffer, read only now).
    with autocast:
        closing = closing_figures(forward, weights, splits, prune=prune_evaluate)
        if cfg.mc_passes and splits.task == "classify":  # the ensemble view of dropout
            mc = mc_dropout_figures(forward, splits.x_test, splits.y_test, cfg.mc_passes)
            closing.update({k: float(v) for k, v in mc.items()})
    if cfg.state_grads:
        state_grads["kept"] = state_gradients(model, *probe)
        closing.update(state_grad_figures(state_grads))
    result = book.result(ending, closing)
    if tests is not None:
        result.test_curve = tests.read(len(book.history))
    result.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    result.seconds = time.perf_counter() - started
    return result


def state_grad_figures(measured: dict[str, list[float]]) -> dict[str, float]:
    """`state_grad/<when>/t01..tT` (||dL/dh_t|| per step) and `state_grad/<when>_decades`,
    log10(||dL/dh_1|| / ||dL/dh_T||): how many orders of magnitude the gradient loses on its
    way back from the last step to the first (negative: it vanishes)."""
    figures: dict[str, float] = {}
    for when, norms in measured.items():
        width = len(str(len(norms)))
        figures.update({f"state_grad/{when}/t{t:0{width}d}": v for t, v in enumerate(norms, 1)})
        first, last = norms[0], norms[-1]
        ratio = first / last if last > 0 else math.nan
        figures[f"state_grad/{when}_decades"] = math.log10(ratio) if ratio > 0 else -math.inf
    return figures


def final_metrics(
    history: list[dict[str, float]],
    best_epoch: int,
    selected_epoch: int,
    cfg: TrainConfig | None = None,
) -> dict[str, float]:
    """A run's closing figures from its history (the kept weights' own figures,
    `closing_figures`, are added by the caller).

    Shared by `fit` and population training, so a member logs exactly what a trial logs.
    `best_*`: the epoch of the best monitored figure. With `cfg`, also the epoch at which each
    comparison rule would have stopped on the monitored curves (`stop_epoch/<rule>`, rules
    named in stopping.COMPARISON_RULES; absent when it would not have stopped within them).
    """
    kept = history[selected_epoch - 1]
    best = history[best_epoch - 1]
    would_stop: dict[str, int] = {}
    if "val/loss" not in kept:  # no validation split: nothing was selected, nothing to say
        return {
            "best_epoch": best_epoch,
            "stopped_epoch": len(history),
            "selected_epoch": selected_epoch,
            "selected_train_loss": kept["train/loss"],
            "selected_train_acc": kept["train/acc"],
        }
    if cfg is not None:
        rules = comparison_rules(cfg.patience, cfg.min_delta, cfg.strip_length)
        would_stop = stop_epochs(
            [monitored(m, "train", cfg.monitor) for m in history],
            [monitored(m, "val", cfg.monitor) for m in history],
            rules,
        )
    return {
        "best_epoch": best_epoch,
        "stopped_epoch": len(history),
        "selected_epoch": selected_epoch,
        "best_val_loss": best["val/loss"],
        "best_val_acc": best["val/acc"],
        "selected_val_loss": kept["val/loss"],
        "selected_val_acc": kept["val/acc"],
        "selected_train_loss": kept["train/loss"],
        "selected_train_acc": kept["train/acc"],
        "gap_loss": kept["gap/loss"],
        "gap_acc": kept["gap/acc"],
        "best_gap_loss": best["gap/loss"],
        "best_gap_acc": best["gap/acc"],
        **{f"stop_epoch/{name}": epoch for name, epoch in would_stop.items()},
    }
