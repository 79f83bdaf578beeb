"""Early-stopping rules: patience, and Prechelt's GL, PQ and UP criteria.

Prechelt, "Early stopping - but when?" (1998), with E_va(t) the validation error after epoch t,
E_opt(t) = min over t' <= t of E_va(t'), and E_tr the training error:
- GL_alpha: generalization loss GL(t) = 100 * (E_va(t) / E_opt(t) - 1); stop when GL(t) > alpha.
- PQ_alpha: training progress over a strip of k epochs,
  P_k(t) = 1000 * (sum_{t'=t-k+1..t} E_tr(t') / (k * min_{t'=t-k+1..t} E_tr(t')) - 1);
  stop when GL(t) / P_k(t) > alpha, checked at the end of each strip.
- UP_s: stop when the validation error rose in s successive strips, i.e. after epoch t with
  E_va(t) > E_va(t - k), and UP_{s-1} stopped after epoch t - k (UP_1: just the first part).
- patience (the Keras / Lightning rule): stop after `patience` epochs without an improvement
  larger than min_delta.
Every rule keeps the best validation epoch's weights; only *when* to stop differs. "Error" here is
the monitored quantity (`train.monitor`): the cross-entropy loss (default), or the error rate
1 - accuracy, on the validation split for E_va and the training split for E_tr.

The error rate reaches 0 once the net memorizes its training split, and P_k divides by the
strip's minimum. P_k is then defined by its limits: a strip whose training errors are all 0 has
P_k = 0 (no progress is left to make, as for any constant strip), so PQ stops at the first
strip end with GL > 0; a strip that reaches 0 from above has P_k = +inf (the most progress
there can be), so PQ does not stop at that strip end. A validation error whose best is 0 gives
GL = 0 while it stays 0 and +inf once it rises (any rise from perfect is an infinite relative
loss).

Comparison: every run also records when each rule of `comparison_rules` would have stopped on
its curves (`stop_epochs`), under fixed names (`patience`, `gl1`, `gl5`, `pq0.5`, `pq2`, `up2`,
`up3`); a rule that would not have stopped within the run is absent.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass
class StoppingRule(ABC):
    """Fed one epoch at a time; `update` says whether to stop after this epoch."""

    name: str

    @abstractmethod
    def update(self, train_loss: float, val_loss: float) -> bool: ...


@dataclass
class Patience(StoppingRule):
    patience: int = 10
    min_delta: float = 0.0
    _best: float = math.inf
    _since_best: int = 0

    def update(self, train_loss: float, val_loss: float) -> bool:
        if val_loss < self._best - self.min_delta:
            self._best, self._since_best = val_loss, 0
        else:
            self._since_best += 1
        return self._since_best >= self.patience


@dataclass
class GeneralizationLoss(StoppingRule):
    alpha: float = 5.0
    _best: float = math.inf

    def update(self, train_loss: float, val_loss: float) -> bool:
        self._best = min(self._best, val_loss)
        return generalization_loss(val_loss, self._best) > self.alpha


@dataclass
class ProgressQuotient(StoppingRule):
    alpha: float = 0.5
    strip: int = 5
    _best: float = math.inf
    _train: list[float] = field(default_factory=list)

    def update(self, train_loss: float, val_loss: float) -> bool:
        self._best = min(self._best, val_loss)
        self._train.append(train_loss)
        if len(self._train) % self.strip:
            return False
        progress = training_progress(self._train[-self.strip :])
        gl = generalization_loss(val_loss, self._best)
        if math.isinf(progress):
            return False  # the strip reached zero training error: still progressing
        if progress <= 0:
            return gl > 0  # training has stalled completely: any generalization loss stops
        return gl / progress > self.alpha


@dataclass
class UpStrips(StoppingRule):
    strips: int = 3
    strip: int = 5
    _val: list[float] = field(default_factory=list)
    _rises: int = 0

    def update(self, train_loss: float, val_loss: float) -> bool:
        self._val.append(val_loss)
        epoch = len(self._val)
        if epoch % self.strip or epoch <= self.strip:
            return False
        rose = self._val[-1] > self._val[-1 - self.strip]
        self._rises = self._rises + 1 if rose else 0
        return self._rises >= self.strips


def generalization_loss(val_loss: float, best_val_loss: float) -> float:
    if best_val_loss <= 0:
        return 0.0 if val_loss <= best_val_loss else math.inf
    return 100.0 * (val_loss / best_val_loss - 1.0)


def training_progress(strip_errors: list[float]) -> float:
    """P_k = 1000 * (mean / min - 1) over the strip; with a minimum of 0 (a memorized training
    split, error monitor): 0 when every error is 0, +inf when the strip reached 0 from above."""
    k, lowest = len(strip_errors), min(strip_errors)
    if lowest <= 0:
        return 0.0 if max(strip_errors) <= 0 else math.inf
    return 1000.0 * (sum(strip_errors) / (k * lowest) - 1.0)


def make_rule(
    kind: str,
    *,
    patience: int = 10,
    min_delta: float = 0.0,
    gl_alpha: float = 5.0,
    pq_alpha: float = 0.5,
    up_strips: int = 3,
    strip: int = 5,
) -> StoppingRule:
    if kind == "patience":
        return Patience(f"patience{patience}", patience=patience, min_delta=min_delta)
    if kind == "gl":
        return GeneralizationLoss(f"gl{gl_alpha:g}", alpha=gl_alpha)
    if kind == "pq":
        return ProgressQuotient(f"pq{pq_alpha:g}", alpha=pq_alpha, strip=strip)
    if kind == "up":
        return UpStrips(f"up{up_strips}", strips=up_strips, strip=strip)
    raise ValueError(f"unknown stopping rule {kind!r}")


# The names under which every run records when each comparison rule would have stopped
# (`stop_epoch/<name>`). Fixed names: the run's own patience is a param, not part of a key.
COMPARISON_RULES = ("patience", "gl1", "gl5", "pq0.5", "pq2", "up2", "up3")


def comparison_rules(patience: int, min_delta: float, strip: int) -> list[StoppingRule]:
    """The rules every run is scored against after the fact (Prechelt's mid-range settings;
    patience with the run's own `patience` and `min_delta`), named as in COMPARISON_RULES."""
    return [
        Patience("patience", patience=patience, min_delta=min_delta),
        GeneralizationLoss("gl1", alpha=1.0),
        GeneralizationLoss("gl5", alpha=5.0),
        ProgressQuotient("pq0.5", alpha=0.5, strip=strip),
        ProgressQuotient("pq2", alpha=2.0, strip=strip),
        UpStrips("up2", strips=2, strip=strip),
        UpStrips("up3", strips=3, strip=strip),
    ]


def stop_epochs(train: list[float], val: list[float], rules: list[StoppingRule]) -> dict[str, int]:
    """The epoch (1-based) at which each rule would have stopped on these curves; a rule that
    would not have stopped within them is left out (never 0: absent means "never")."""
    out = {}
    for rule in rules:
        for epoch, (tr, va) in enumerate(zip(train, val, strict=True), start=1):
            if rule.update(tr, va):
                out[rule.name] = epoch
                break
    return out
