"""Multi-layer perceptron (lecture notes: "Feed Forward Network").

Each layer computes o = f(sum_k i_k W_k + b); stacking them gives the MLP. Dropout follows every
hidden activation: during training each output is zeroed with probability p and the survivors
are scaled by 1 / (1 - p) (inverted dropout), so evaluation needs no rescaling.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studylib.models.common import FrozenConfig, reads_numbers

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,  # with identity the whole net is one linear map: logistic regression
}


class MLPConfig(FrozenConfig):
    """Accepts examples of any shape: they are flattened (MNIST-1D: 40, digits: 64 inputs)."""

    arch: Literal["mlp"] = "mlp"
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (256, 256), description="width of each hidden layer; [] is logistic regression"
    )
    activation: Literal[tuple(ACTIVATIONS)] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="drop probability after each hidden layer")
    residual: bool = Field(
        False,
        description="hidden layers after the first add their input back: h <- h + f(W h + b) "
        "(the MNIST-1D paper's MLP); needs equal widths",
    )

    @model_validator(mode="after")
    def _widths_match(self) -> MLPConfig:
        if self.residual and len(set(self.hidden)) > 1:
            raise ValueError(f"residual needs equal hidden widths, got {list(self.hidden)}")
        return self

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        """Any shape of numbers will do: the MLP flattens it."""
        reads_numbers("mlp", input_shape)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, in_features: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in cfg.hidden:
            layers.append(
                nn.Sequential(
                    nn.Linear(width, hidden), ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)
                )
            )
            width = hidden
        self.hidden = nn.ModuleList(layers)
        self.head = nn.Linear(width, num_classes)
        self.residual = cfg.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # (B, L) or (B, C, L) -> (B, D)
        for i, layer in enumerate(self.hidden):
            h = h + layer(h) if self.residual and i > 0 else layer(h)  # (B, hidden)
        return self.head(h)  # (B, num_classes)


# ---------------------------------------------------------------------------------------------
# Dropout's two forms. The lecture notes drop units in training without rescaling and, at test
# time, scale the weights that read the dropped units by 1 - p; `MLP` uses inverted dropout
# (survivors scaled by 1 / (1 - p) in training, nothing at test). They compute the same
# functions when W_inverted = (1 - p) W_notes: `notes_form` converts an inverted-dropout MLP,
# `scaled_for_test` does the notes' test-time scaling. Tested: equal outputs under the same
# masks in training and in evaluation, bit for bit where 1 - p is a power of two.


class NotesDropout(nn.Module):
    """Zero each input with probability p in training, no rescaling; identity in evaluation.
    Draws its mask as nn.Dropout does on the CPU (one bernoulli(1 - p) per entry from the
    global generator), so the same seed gives both forms the same masks."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * torch.empty_like(x).bernoulli_(1 - self.p)


def _readers(model: MLP) -> list[nn.Linear]:
    """The layers that read a dropped unit: every hidden layer after the first, and the head."""
    if model.residual:
        raise ValueError(
            "a residual MLP adds dropped units to undropped ones: no weight scaling converts it"
        )
    return [layer[0] for layer in list(model.hidden)[1:]] + [model.head]


def _dropout_rate(model: MLP) -> float:
    rates = {m.p for m in model.modules() if isinstance(m, (nn.Dropout, NotesDropout))}
    if len(rates) != 1:
        raise ValueError(f"expected one dropout rate in the model, found {sorted(rates)}")
    return rates.pop()


@torch.no_grad()
def notes_form(model: MLP) -> MLP:
    """A copy of an inverted-dropout MLP in the notes' form: NotesDropout layers, and the
    weights that read dropped units divided by 1 - p, so training computes the same function."""
    p = _dropout_rate(model)
    notes = copy.deepcopy(model)
    for layer in notes.hidden:
        layer[2] = NotesDropout(p)
    for linear in _readers(notes):
        linear.weight.div_(1 - p)
    return notes


@torch.no_grad()
def scaled_for_test(notes: MLP) -> MLP:
    """The notes' test-time network: a copy of a notes-form MLP with the weights that read
    dropped units multiplied by 1 - p and the dropout layers removed."""
    p = _dropout_rate(notes)
    scaled = copy.deepcopy(notes)
    for layer in scaled.hidden:
        layer[2] = nn.Identity()
    for linear in _readers(scaled):
        linear.weight.mul_(1 - p)
    return scaled
