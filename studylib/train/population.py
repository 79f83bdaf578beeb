"""Population training: P trials of one architecture trained at once, as one batched model.

Small models leave most of a device idle: one trial's batch of 100 examples through a 256-wide
MLP is a handful of tiny matmuls, dominated by per-operation overhead. Stacking P trials'
weights (`torch.func.stack_module_state`) and mapping the model over them (`torch.vmap`) turns
P small matmuls into one batched matmul per layer, with one optimizer kernel for all members.

What each member keeps of its own, exactly as a sequential trial would have it:
- its dropout rate (each `nn.Dropout` becomes `MemberDropout`, whose rate is a stacked buffer),
  its L1 and L2 strengths, its decoupled weight decay, its early-stopping rule, monitored figure
  and on/off switch;
- its history, best epoch, kept weights and closing figures (test score, kept-weight statistics,
  prune-and-evaluate), through the same epoch step and closing as a sequential trial
  (`loop.EpochBook`, `loop.closing_figures`);
- its epoch callback, which may end it alone (the sweep's: MLflow curve, Optuna pruning).
Members that stop are taken out of the stacked tensors (and of the optimizer's state), so the
population shrinks and the survivors train on at the same per-member arithmetic. With
`--workers N` every worker process trains populations of its own (sweep/workers.py): on a GPU,
N populations share the card.

What members share (checked, else a one-line ConfigError): the architecture, the data and
seed (so the same initial weights and the same batch order, as sequential trials of one study
have), the optimizer, learning rate, momentum, batch size, epoch budget and L1 method (with
`l1_method = "proximal"` each member's soft threshold is its own lr * l1, preconditioned by its
own slice of Adam's second moment, exactly as `fit` does it).

Equality with sequential training: every member's update is the same arithmetic as its
sequential trial's, so with dropout 0 the curves agree to float rounding (tested). With
dropout the masks differ: a sequential trial draws them with `bernoulli_` one trial at a time,
a member draws them with `rand_like` inside vmap, shared by all members (common random numbers:
a member with a higher rate drops a superset of the units a lower rate drops). Same
distribution, different draws, so curves with dropout agree only statistically.

Not supported (refused before training, with the reason): a searched learning rate or
optimizer setting, BatchNorm running statistics, dropout other than `nn.Dropout`, and any
model `vmap` cannot map (checked by a dry run). Test curves (`fit(test_curve=True)`) are for
ablation arms, which train sequentially: population training does not record them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from studylib.config import Experiment
from studylib.data import Splits
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.train.loop import (
    EVAL_BATCH,
    EpochBook,
    EpochCallback,
    TrainResult,
    closing_figures,
    epoch_metrics,
    make_optimizer,
)
from studylib.train.regularizers import SPARSITY_THRESHOLD, proximal_l1_step

# Per member: what a sweep may vary (dropout lives in the model config). Every other training
# setting shapes the batches or the optimizer, so members share it.
MEMBER_TRAIN_FIELDS = (
    "l1",
    "l2",
    "weight_decay",
    "early_stopping",
    "monitor",
    "stopping",
    "patience",
    "min_delta",
    "gl_alpha",
    "pq_alpha",
    "up_strips",
    "strip_length",
)


class MemberDropout(nn.Module):
    """Inverted dropout whose rate is a buffer, so that stacked members each have their own."""

    def __init__(self, rate: float):
        super().__init__()
        # Not persistent: a member's model.pt holds exactly what its sequential trial's holds.
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)
        self.active = rate > 0  # set for the whole population: False skips the random draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        keep = torch.rand_like(x) >= self.rate
        return x * keep / (1 - self.rate)


def check_population(exps: list[Experiment]) -> None:
    """One-line ConfigError when these configs cannot train as one population."""
    first = exps[0]
    for exp in exps:
        check_population_search(exp)
    for exp in exps[1:]:
        if exp.model.model_copy(update={"dropout": 0.0}) != first.model.model_copy(
            update={"dropout": 0.0}
        ):
            raise ConfigError(
                "population: members must share the architecture (all but model.dropout); "
                f"got {first.model} and {exp.model}"
            )
        for name in ("data", "seed"):
            if getattr(exp, name) != getattr(first, name):
                raise ConfigError(f"population: members must share {name}")
        for name in type(exp.train).model_fields:
            mine, theirs = getattr(first.train, name), getattr(exp.train, name)
            if name not in MEMBER_TRAIN_FIELDS and mine != theirs:
                raise ConfigError(
                    f"population: train.{name} differs between members ({mine} vs {theirs}); "
                    f"only {', '.join(MEMBER_TRAIN_FIELDS)} and model.dropout may differ"
                )


def check_population_search(exp: Experiment) -> None:
    """Refuse, before any trial is asked, what population training does not implement."""
    if exp.data.input_shape is None or exp.model.arch == "seq2seq":
        raise ConfigError(
            f"population: data.name = {exp.data.name!r} with model.arch = {exp.model.arch!r}: "
            "population training classifies fixed-shape examples only (not token ids or "
            "seq2seq); sweep without --population"
        )
    for name in ("grad_clip", "grad_norms", "state_grads"):
        if getattr(exp.train, name):
            raise ConfigError(
                f"population: train.{name} = {getattr(exp.train, name)!r}; population "
                f"training does not implement it; set it off or sweep without --population"
            )
    if not exp.train.shuffle:
        raise ConfigError(
            "population: train.shuffle = false; population training draws a fresh batch order "
            "each epoch; set it true or sweep without --population"
        )
    shared = [name for name in exp.sweep.search if name in ("lr",)]
    if shared:
        raise ConfigError(
            f"--population: sweep.search.{shared[0]} is searched, but population members "
            "share one learning rate; fix it in [train] or sweep without --population"
        )


@dataclass
class MemberOutcome:
    result: TrainResult | None  # None when training ended by an exception
    error: Exception | None = None  # e.g. optuna.TrialPruned raised by the member's callback


class Population:
    """P members of one architecture as stacked tensors, trained by one vmapped model."""

    def __init__(self, exps: list[Experiment], splits: Splits):
        check_population(exps)
        device = splits.x_train.device
        self.exps = exps
        self.cfg = exps[0].train
        models = []
        for exp in exps:  # each member's init, exactly as its sequential trial makes it
            torch.manual_seed(exp.seed)
            shape, classes, vocab = splits.input_shape, splits.num_classes, splits.vocab_size
            model = build_model(exp.model, shape, classes, vocab)
            _check_supported(model)
            # Moved after the swap: a MemberDropout's rate buffer must live on the device too.
            models.append(_with_member_dropout(model).to(device))
        self.parameter_count = sum(p.numel() for p in models[0].parameters())
        self.state_names = list(models[0].state_dict())  # what a member's model.pt holds
        params, buffers = stack_module_state(models)
        self.params = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
        self.buffers = buffers
        active = any(m.active for model in models for m in _dropouts(model))
        self.base = copy.deepcopy(models[0]).to("meta")
        for module in _dropouts(self.base):
            module.active = active
        self.weight_names = [k for k, p in self.params.items() if p.ndim >= 3]  # matrices
        self.forward = torch.vmap(self._member_forward, in_dims=(0, 0, None), randomness="same")
        self.l1 = self._per_member([e.train.l1 for e in exps], device)
        self.l2 = self._per_member([e.train.l2 for e in exps], device)
        self.proximal = self.cfg.l1_method == "proximal"
        # lr * l1 per member, multiplied on the host as `fit` multiplies it (same rounding).
        self.l1_step = self._per_member([e.train.lr * e.train.l1 for e in exps], device)
        decay = [1.0 - e.train.lr * e.train.weight_decay for e in exps]
        self.decay = self._per_member(decay, device)
        self.optimizer = make_optimizer(self.cfg, list(self.params.values()))
        self.best = {k: p.detach().clone() for k, p in self.params.items()}
        self._note_regularizers()
        self._dry_run(splits.x_train[:2])

    def _note_regularizers(self) -> None:
        # Read on the host once per change of members, never per batch (that would sync).
        self.any_l1 = bool(self.l1.any())
        self.any_l2 = bool(self.l2.any())
        self.any_decay = bool((self.decay != 1).any())

    @staticmethod
    def _per_member(values: list[float], device: torch.device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    def _member_forward(self, params, buffers, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _dry_run(self, x: torch.Tensor) -> None:
        try:
            self.evaluate(x, torch.zeros(len(x), dtype=torch.long, device=x.device))
        except Exception as exc:
            raise ConfigError(
                f"population: torch.vmap cannot map model {self.exps[0].model.arch!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def weights(self) -> list[torch.Tensor]:
        return [self.params[k] for k in self.weight_names]

    @torch.no_grad()
    def add_penalty_gradients(self) -> torch.Tensor:
        """Per member, add l1 * sign(w) + 2 * l2 * w to the gradients (as `fit` does, outside
        autograd) and return l1 * sum |w| + l2 * sum w^2 over its weight matrices, (P,)."""
        total = torch.zeros_like(self.l1)
        for w in self.weights():
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            per_member = [-1, *[1] * (w.ndim - 1)]
            if self.any_l1:
                if not self.proximal:  # else the proximal step after the optimizer's
                    w.grad.add_(w.sign() * self.l1.view(per_member))
                total += self.l1 * w.abs().flatten(1).sum(1)
            if self.any_l2:
                w.grad.add_(w * (2 * self.l2).view(per_member))
                total += self.l2 * w.square().flatten(1).sum(1)
        return total

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step for every member on the same batch; each member's objective."""
        size = self.size
        logits = self.forward(self.params, self.buffers, x)  # (P, B, C)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(size), reduction="none")
        loss = loss.view(size, -1).mean(1)  # (P,)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # members are independent: each gets its own gradient
        objective = loss.detach()
        if self.any_l1 or self.any_l2:
            objective = objective + self.add_penalty_gradients()
        if self.any_decay:
            with torch.no_grad():
                for w in self.weights():
                    w.mul_(self.decay.view(-1, *[1] * (w.ndim - 1)))
        self.optimizer.step()
        if self.proximal and self.any_l1:
            weights = self.weights()
            scaled = [self.l1_step.view(-1, *[1] * (w.ndim - 1)) for w in weights]
            proximal_l1_step(self.optimizer, weights, scaled)
        return objective

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(mean cross-entropy, accuracy) per member, shape (P, 2), in eval mode."""
        self.base.eval()
        size = self.size
        loss_sum = x.new_zeros(size, dtype=torch.float32)
        correct = x.new_zeros(size, dtype=torch.float32)
        for start in range(0, len(y), EVAL_BATCH):
            logits = self.forward(self.params, self.buffers, x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            loss = F.cross_entropy(logits.flatten(0, 1), target.repeat(size), reduction="none")
            loss_sum += loss.view(size, -1).sum(1)
            correct += (logits.argmax(dim=-1) == target).sum(1)
        self.base.train()
        return torch.stack([loss_sum, correct], 1) / len(y)

    @torch.no_grad()
    def weight_stats(self) -> torch.Tensor:
        """(global L2 norm, fraction of |w| below SPARSITY_THRESHOLD) per member, (P, 2)."""
        weights = self.weights()
        norm = sum(w.square().flatten(1).sum(1) for w in weights).sqrt()
        small = sum((w.abs() < SPARSITY_THRESHOLD).flatten(1).sum(1) for w in weights)
        count = sum(w[0].numel() for w in weights)
        return torch.stack([norm, small / count], 1)

    @torch.no_grad()
    def keep_best(self, slots: list[int]) -> None:
        """Copy these members' current weights into their best-so-far state."""
        index = torch.tensor(slots, device=self.l1.device)
        for k, p in self.params.items():
            self.best[k].index_copy_(0, index, p.detach().index_select(0, index))

    def member_state(self, slot: int, best: bool) -> dict[str, torch.Tensor]:
        """One member's weights (best-so-far or current) under its model's state-dict names."""
        source = self.best if best else self.params
        merged = {**{k: v[slot] for k, v in source.items()}, **self.buffers_of(slot)}
        return {k: merged[k].detach().clone() for k in self.state_names}

    def buffers_of(self, slot: int) -> dict[str, torch.Tensor]:
        return {k: b[slot] for k, b in self.buffers.items()}

    def closing(self, slot: int, best: bool, splits: Splits) -> dict[str, float]:
        """One member's closing figures (test score, kept-weight statistics) through
        `loop.closing_figures`, the very function that closes a sequential trial (a member is a
        sweep trial: no prune-and-evaluate, as `fit` leaves it out of sweep trials)."""
        source = self.best if best else self.params
        params = {k: v[slot].detach().clone() for k, v in source.items()}
        member = _Member(self.base, params, self.buffers_of(slot))
        return closing_figures(member, [params[k] for k in self.weight_names], splits)

    def keep_only(self, slots: list[int]) -> None:
        """Drop every member not in `slots` from the tensors and the optimizer's state."""
        index = torch.tensor(slots, device=self.l1.device)
        old_params, old_state = self.params, self.optimizer.state
        self.params = {
            k: p.detach().index_select(0, index).requires_grad_() for k, p in old_params.items()
        }
        self.buffers = {k: b.index_select(0, index) for k, b in self.buffers.items()}
        self.best = {k: b.index_select(0, index) for k, b in self.best.items()}
        self.l1, self.l2, self.decay, self.l1_step = (
            t.index_select(0, index) for t in (self.l1, self.l2, self.decay, self.l1_step)
        )
        self._note_regularizers()
        self.optimizer = make_optimizer(self.cfg, list(self.params.values()))
        for k, new in self.params.items():
            old = old_params[k]
            if old in old_state:  # moments per member; the step count is shared
                self.optimizer.state[new] = {
                    name: value.index_select(0, index)
                    if torch.is_tensor(value) and value.shape == old.shape
                    else (value.clone() if torch.is_tensor(value) else value)
                    for name, value in old_state[old].items()
                }


def fit_population(
    population: Population | list[Experiment],
    splits: Splits,
    on_epoch: list[EpochCallback | None] | None = None,
) -> list[MemberOutcome]:
    """Train every member at once; one outcome per member, in the members' order.

    Mirrors `loop.fit` member by member: the same metrics per epoch, the same epoch step
    (`EpochBook`: best epoch, stopping rule, divergence), the same kept weights and the same
    single test score. A callback that raises (optuna.TrialPruned, say) ends only its member.
    """
    if not isinstance(population, Population):
        population = Population(population, splits)
    exps, cfg = population.exps, population.cfg
    callbacks = on_epoch or [None] * len(exps)
    books = [EpochBook(exp.train) for exp in exps]
    outcomes: list[MemberOutcome | None] = [None] * len(exps)
    alive = list(range(len(exps)))  # member index of each slot of the stacked tensors
    device = splits.x_train.device
    order = torch.Generator(device=device).manual_seed(exps[0].seed)
    n = len(splits.y_train)

    for epoch in range(1, cfg.max_epochs + 1):
        objective_sum = torch.zeros(population.size, device=device)
        perm = torch.randperm(n, device=device, generator=order)  # the sequential batch order
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            objective = population.train_step(splits.x_train[idx], splits.y_train[idx])
            objective_sum += objective * len(idx)
        # One host sync per epoch for the whole population.
        rows = torch.cat(
            [
                (objective_sum / n).unsqueeze(1),
                population.evaluate(splits.x_train, splits.y_train),
                population.evaluate(splits.x_val, splits.y_val),
                population.weight_stats(),
            ],
            1,
        ).tolist()
        lr = population.optimizer.param_groups[0]["lr"]

        improved, ended = [], {}  # slot -> its Ending (None: ended by its callback)
        for slot, member in enumerate(alive):
            metrics = epoch_metrics(*rows[slot], lr=lr)
            keep, ending = books[member].step(epoch, metrics)
            if ending is not None and ending.status == "diverged":
                ended[slot] = ending
                continue
            if keep:
                improved.append(slot)
            try:
                if callbacks[member] is not None:
                    callbacks[member](epoch, metrics)
            except Exception as exc:  # pruned (or a failing callback): this member only
                outcomes[member] = MemberOutcome(None, exc)
                ended[slot] = None
                continue
            if ending is not None:
                ended[slot] = ending
        if improved:
            population.keep_best(improved)
        for slot, ending in ended.items():
            member = alive[slot]
            if ending is not None:
                outcomes[member] = MemberOutcome(
                    _result(population, slot, books[member], ending, splits)
                )
        if ended:
            keep = [slot for slot in range(len(alive)) if slot not in ended]
            alive = [alive[slot] for slot in keep]
            if not alive:
                break
            population.keep_only(keep)
    assert all(outcome is not None for outcome in outcomes)
    return outcomes


def _result(
    population: Population, slot: int, book: EpochBook, ending, splits: Splits
) -> TrainResult:
    """A finished member's TrainResult, as `fit` returns it for a sequential trial."""
    if ending.status == "diverged":
        return book.result(ending)
    best = book.has_best_state
    result = book.result(ending, population.closing(slot, best, splits))
    result.state_dict = {k: v.cpu() for k, v in population.member_state(slot, best).items()}
    return result


class _Member(nn.Module):
    """One member of a population as a plain module (for `train.evaluate`)."""

    def __init__(self, base: nn.Module, params: dict, buffers: dict):
        super().__init__()
        self.base, self.member_params, self.member_buffers = base, params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (self.member_params, self.member_buffers), (x,))


def _dropouts(model: nn.Module) -> list[MemberDropout]:
    return [m for m in model.modules() if isinstance(m, MemberDropout)]


def _with_member_dropout(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout by a MemberDropout of the same rate (same parameters)."""
    for name, child in model.named_children():
        if type(child) is nn.Dropout:
            setattr(model, name, MemberDropout(child.p))
        else:
            _with_member_dropout(child)
    return model


def _check_supported(model: nn.Module) -> None:
    for module in model.modules():
        kind = type(module).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            raise ConfigError(f"population: {kind} keeps running statistics; not supported")
        if isinstance(module, nn.modules.dropout._DropoutNd) and type(module) is not nn.Dropout:
            raise ConfigError(f"population: {kind} is not supported (nn.Dropout is)")
        if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            raise ConfigError("population: attention dropout is not supported")
