"""Multi-layer perceptron (lecture notes: "Feed Forward Network").

Each layer computes o = f(sum_k i_k W_k + b); stacking them gives the MLP. Dropout follows every
hidden activation: during training each output is zeroed with probability p and the survivors
are scaled by 1 / (1 - p) (inverted dropout), so evaluation needs no rescaling.
"""

from __future__ import annotations

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
