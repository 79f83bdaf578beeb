"""One file per model family; `build_model` turns a validated config into an `nn.Module`."""

from __future__ import annotations

from torch import nn

from studylib.models.mlp import MLP, MLPConfig


def build_model(cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`input_shape` is one example's shape, without the batch axis."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    if isinstance(cfg, MLPConfig):
        return MLP(cfg, in_features, num_classes)
    raise TypeError(f"no model for config {type(cfg).__name__}")
