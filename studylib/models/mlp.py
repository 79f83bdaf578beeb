"""Multi-layer perceptron (lecture notes: "Feed Forward Network").

Each layer computes o = f(sum_k i_k W_k + b); stacking them gives the MLP. Dropout follows every
hidden activation: during training each output is zeroed with probability p and the survivors
are scaled by 1 / (1 - p) (inverted dropout), so evaluation needs no rescaling.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
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

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        """Any shape of numbers will do: the MLP flattens it."""
        reads_numbers("mlp", input_shape)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, in_features: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in cfg.hidden:
            layers += [
                nn.Linear(width, hidden),
                ACTIVATIONS[cfg.activation](),
                nn.Dropout(cfg.dropout),
            ]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L) or (B, C, L) -> (B, num_classes)
        return self.net(x.flatten(1))
