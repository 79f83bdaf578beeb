"""Convolutional networks, 1-D for signals and 2-D for images (lecture notes: "CNN", "Pooling
Layer", "ResNet", "DenseNet").

A convolution layer takes a W x H x D input through K filters of size F x F x D, stride S and
padding P:

    W' = (W - F + 2P) / S + 1          (H' alike)
    parameters = (F * F * D + 1) * K   (1-D: (F * D + 1) * K; the + 1 is each filter's bias)

A pooling layer of size F and stride S keeps the depth: W' = (W - F) / S + 1, no parameters.
A 1 x 1 convolution changes the channel count at a fixed width.

Blocks, one `[[model.blocks]]` table each, chosen by `type`:
- "conv": convolution, activation, optional pooling;
- "residual": y = act(F(x) + x), F two convolutions; the skip is the identity, or a 1 x 1
  convolution with the block's stride where the channel count or width changes (projection);
- "dense": layer i convolves the concatenation of the block input and every earlier layer's
  output and adds `growth` channels, so the block ends with D + layers * growth channels;
- "transition": a 1 x 1 convolution, then average pooling: thins a dense block between blocks.
Then flatten and a fully connected head. Dropout (the swept rate) acts after each block, before
each head layer, or both (`dropout_at`).

`plan(cfg, input_shape)` applies the formulas above layer by layer without building anything,
so a config whose sizes do not divide (size_rule = "exact") or shrink to nothing is a config
error naming the layer, before any training. Tests check the plan against what torch builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Discriminator, Field, Tag, model_validator
from torch import nn

from studylib.models.common import FrozenConfig, reads_numbers
from studylib.models.mlp import ACTIVATIONS

Padding = Annotated[int, Field(ge=0)] | Literal["same"]


class PoolConfig(FrozenConfig):
    kind: Literal["max", "avg"] = "max"
    size: int = Field(2, ge=1, description="F: pooling window")
    stride: int | None = Field(None, ge=1, description="S; default: the window size")

    @property
    def step(self) -> int:
        return self.stride or self.size


class ConvBlockConfig(FrozenConfig):
    type: Literal["conv"] = "conv"
    channels: int = Field(ge=1, description="K: number of filters")
    kernel: int = Field(3, ge=1, description="F: filter size (F x F in 2-D)")
    stride: int = Field(1, ge=1, description="S")
    padding: Padding = Field("same", description='P, or "same": (F - 1) / 2 for an odd F')
    pool: PoolConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ConvBlockConfig:
        _odd_for_same(self.kernel, self.padding)
        return self


class ResidualBlockConfig(FrozenConfig):
    type: Literal["residual"] = "residual"
    channels: int = Field(ge=1, description="K of both convolutions")
    kernel: int = Field(3, ge=1, description="odd: both convolutions pad 'same'")
    stride: int = Field(1, ge=1, description="stride of the first convolution and the skip")
    pool: PoolConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ResidualBlockConfig:
        _odd_for_same(self.kernel, "same")
        return self


class DenseBlockConfig(FrozenConfig):
    type: Literal["dense"] = "dense"
    layers: int = Field(3, ge=1)
    growth: int = Field(12, ge=1, description="channels each layer adds")
    kernel: int = Field(3, ge=1, description="odd: every layer pads 'same'")

    @model_validator(mode="after")
    def _check(self) -> DenseBlockConfig:
        _odd_for_same(self.kernel, "same")
        return self


class TransitionBlockConfig(FrozenConfig):
    type: Literal["transition"] = "transition"
    channels: int = Field(ge=1, description="K of the 1 x 1 convolution")
    pool: PoolConfig = PoolConfig(kind="avg", size=2)


def _odd_for_same(kernel: int, padding: Padding) -> None:
    if padding == "same" and kernel % 2 == 0:
        raise ValueError(f"padding 'same' needs an odd kernel, got kernel = {kernel}")


def _block_type(value: Any) -> str | None:
    # `type` may be left out of a [[model.blocks]] table: a plain convolution.
    if isinstance(value, dict):
        return value.get("type", "conv")
    return getattr(value, "type", None)


BLOCK_CONFIGS = {
    "conv": ConvBlockConfig,
    "residual": ResidualBlockConfig,
    "dense": DenseBlockConfig,
    "transition": TransitionBlockConfig,
}
BlockConfig = Annotated[
    Annotated[ConvBlockConfig, Tag("conv")]
    | Annotated[ResidualBlockConfig, Tag("residual")]
    | Annotated[DenseBlockConfig, Tag("dense")]
    | Annotated[TransitionBlockConfig, Tag("transition")],
    Discriminator(_block_type),
]

# Three "same" convolutions, each followed by 2 x 2 max pooling: 40 -> 20 -> 10 -> 5 exactly.
# Pooling makes it tolerant of MNIST-1D's shifts (81% test with 1,000 training examples against
# 62% for the paper's strided convolutions; see experiments/cnn.toml).
_DEFAULT_BLOCKS = (
    ConvBlockConfig(channels=32, kernel=5, pool=PoolConfig(kind="max", size=2)),
    ConvBlockConfig(channels=32, kernel=3, pool=PoolConfig(kind="max", size=2)),
    ConvBlockConfig(channels=32, kernel=3, pool=PoolConfig(kind="max", size=2)),
)


class CNNConfig(FrozenConfig):
    """Examples of shape (W,) need dims = 1 (MNIST-1D); (H, W) need dims = 2 (digits)."""

    arch: Literal["cnn"] = "cnn"
    dims: Literal[1, 2] = Field(1, description="1: signals (W,); 2: images (H, W)")
    blocks: tuple[BlockConfig, ...] = Field(_DEFAULT_BLOCKS, min_length=1)
    head: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (), description="hidden widths of the fully connected head; [] is one linear layer"
    )
    activation: Literal[tuple(ACTIVATIONS)] = "relu"
    batch_norm: bool = Field(False, description="batch norm after every convolution")
    dropout: float = Field(0.0, ge=0, lt=1, description="drop probability (the swept rate)")
    dropout_at: Literal["blocks", "head", "both"] = Field(
        "both", description="after each conv block, before each head layer, or both"
    )
    size_rule: Literal["exact", "floor"] = Field(
        "exact",
        description="exact: (W - F + 2P) / S must be whole; floor: round down as torch does "
        "(the last columns a filter cannot reach are dropped)",
    )

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        feature_plan(self, reads_numbers("cnn", input_shape))


# ---------------------------------------------------------------------------------------------
# Sizes and parameter counts from the lecture-note formulas


def conv_output_size(
    width: int, kernel: int, stride: int, padding: int = 0, exact: bool = True
) -> int:
    """W' = (W - F + 2P) / S + 1; pooling is the case P = 0. ValueError when not whole
    (exact) or below 1."""
    span = width - kernel + 2 * padding
    formula = f"(W - F + 2P)/S + 1 = ({width} - {kernel} + 2*{padding})/{stride} + 1"
    if span < 0:
        raise ValueError(
            f"{formula} < 1: the input shrinks to nothing; allowed: a smaller kernel, more "
            "padding or fewer downsampling layers before it"
        )
    if exact and span % stride:
        raise ValueError(
            f"{formula} = {span / stride + 1:g} is not a whole number; allowed: a kernel, "
            "stride or padding that divides, or model.size_rule = 'floor'"
        )
    return span // stride + 1


def conv_parameters(kernel: int, in_channels: int, out_channels: int, dims: int) -> int:
    """(F * F * D + 1) * K in 2-D, (F * D + 1) * K in 1-D."""
    return (kernel**dims * in_channels + 1) * out_channels


@dataclass(frozen=True)
class LayerPlan:
    module: str  # path of the torch module it describes, e.g. "blocks.0.unit.conv"
    kind: str  # conv, norm, pool, block (a whole block's output), linear
    out_shape: tuple[int, ...]  # (K, W') or (K, H', W'); (features,) for the head
    params: int


def feature_plan(cfg: CNNConfig, input_shape: tuple[int, ...]) -> list[LayerPlan]:
    """Every conv, norm and pool layer's output shape and parameter count, or ValueError naming
    the layer. `input_shape` is one example's, without batch or channel axis."""
    if len(input_shape) != cfg.dims:
        wanted = "(W,) signals such as MNIST-1D" if cfg.dims == 1 else "(H, W) images (digits)"
        raise ValueError(
            f"model.dims = {cfg.dims}: a {cfg.dims}-D CNN reads {wanted}, but the data's "
            f"examples have shape {tuple(input_shape)}; allowed: model.dims = {len(input_shape)}"
        )
    exact = cfg.size_rule == "exact"
    layers: list[LayerPlan] = []
    channels, size = 1, tuple(input_shape)

    def conv(where: str, path: str, out: int, kernel: int, stride: int, padding: Padding) -> None:
        nonlocal channels, size
        pad = (kernel - 1) // 2 if padding == "same" else padding
        try:
            size = tuple(conv_output_size(w, kernel, stride, pad, exact) for w in size)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        params = conv_parameters(kernel, channels, out, cfg.dims)
        layers.append(LayerPlan(f"{path}.conv", "conv", (out, *size), params))
        if cfg.batch_norm:
            layers.append(LayerPlan(f"{path}.norm", "norm", (out, *size), 2 * out))
        channels = out

    def pool(where: str, path: str, spec: PoolConfig | None) -> None:
        nonlocal size
        if spec is None:
            return
        try:
            size = tuple(conv_output_size(w, spec.size, spec.step, 0, exact) for w in size)
        except ValueError as exc:
            raise ValueError(f"{where} pool: {exc}") from None
        layers.append(LayerPlan(path, "pool", (channels, *size), 0))

    for i, block in enumerate(cfg.blocks):
        where, path = f"model.blocks[{i}] ({block.type})", f"blocks.{i}"
        if isinstance(block, ConvBlockConfig):
            conv(where, f"{path}.unit", block.channels, block.kernel, block.stride, block.padding)
            pool(where, f"{path}.pool", block.pool)
        elif isinstance(block, ResidualBlockConfig):
            in_channels, in_size = channels, size
            conv(where, f"{path}.unit1", block.channels, block.kernel, block.stride, "same")
            conv(where, f"{path}.unit2", block.channels, block.kernel, 1, "same")
            if in_channels != block.channels or block.stride != 1:
                # The 1 x 1 projection (P = 0) lands on the same width as the 'same'-padded path.
                channels, size = in_channels, in_size
                conv(
                    f"{where} projection", f"{path}.projection", block.channels, 1, block.stride, 0
                )
            layers.append(LayerPlan(f"{path}.add", "block", (channels, *size), 0))
            pool(where, f"{path}.pool", block.pool)
        elif isinstance(block, DenseBlockConfig):
            start = channels
            for j in range(block.layers):
                channels = start + j * block.growth  # layer j sees the concatenation so far
                conv(
                    f"{where} layer {j}", f"{path}.units.{j}", block.growth, block.kernel, 1, "same"
                )
            channels = start + block.layers * block.growth
            layers.append(LayerPlan(path, "block", (channels, *size), 0))
        else:
            conv(where, f"{path}.unit", block.channels, 1, 1, 0)
            pool(where, f"{path}.pool", block.pool)
    return layers


def plan(cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> list[LayerPlan]:
    """`feature_plan`, then flatten and the fully connected head: the whole network."""
    layers = feature_plan(cfg, input_shape)
    features = 1
    for n in layers[-1].out_shape:
        features *= n
    for i, width in enumerate((*cfg.head, num_classes)):
        layers.append(LayerPlan(f"head.{i}", "linear", (width,), (features + 1) * width))
        features = width
    return layers


# ---------------------------------------------------------------------------------------------
# Modules

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
POOL = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d}
POOL |= {("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}


def _pool(spec: PoolConfig | None, dims: int) -> nn.Module:
    if spec is None:
        return nn.Identity()
    return POOL[spec.kind, dims](kernel_size=spec.size, stride=spec.step)


class ConvUnit(nn.Module):
    """Convolution, optional batch norm, optional activation."""

    def __init__(self, cfg: CNNConfig, cin: int, cout: int, kernel: int, stride: int, pad, act):
        super().__init__()
        padding = (kernel - 1) // 2 if pad == "same" else pad
        self.conv = CONV[cfg.dims](cin, cout, kernel, stride=stride, padding=padding)
        self.norm = NORM[cfg.dims](cout) if cfg.batch_norm else nn.Identity()
        self.act = ACTIVATIONS[cfg.activation]() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, D, W) -> (B, K, W')   [2-D: (B, D, H, W) -> (B, K, H', W')]
        return self.act(self.norm(self.conv(x)))


class PlainBlock(nn.Module):
    def __init__(self, cfg: CNNConfig, block: ConvBlockConfig, cin: int):
        super().__init__()
        self.unit = ConvUnit(
            cfg, cin, block.channels, block.kernel, block.stride, block.padding, True
        )
        self.pool = _pool(block.pool, cfg.dims)
        self.out_channels = block.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.unit(x))


class ResidualBlock(nn.Module):
    """y = act(F(x) + skip(x)); skip is the identity unless channels or stride change."""

    def __init__(self, cfg: CNNConfig, block: ResidualBlockConfig, cin: int):
        super().__init__()
        k, f, s = block.channels, block.kernel, block.stride
        self.unit1 = ConvUnit(cfg, cin, k, f, s, "same", act=True)
        self.unit2 = ConvUnit(cfg, k, k, f, 1, "same", act=False)  # activation after the sum
        if cin != k or s != 1:
            self.projection: nn.Module = ConvUnit(cfg, cin, k, 1, s, 0, act=False)
        else:
            self.projection = nn.Identity()
        self.add = nn.Identity()  # a named point for hooks: the sum's shape
        self.act = ACTIVATIONS[cfg.activation]()
        self.pool = _pool(block.pool, cfg.dims)
        self.out_channels = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, D, W) -> (B, K, W')
        return self.pool(self.act(self.add(self.unit2(self.unit1(x)) + self.projection(x))))


class DenseBlock(nn.Module):
    """Layer j convolves concat(x, y_0, ..., y_{j-1}); the output is the whole concatenation."""

    def __init__(self, cfg: CNNConfig, block: DenseBlockConfig, cin: int):
        super().__init__()
        g = block.growth
        self.units = nn.ModuleList(
            ConvUnit(cfg, cin + j * g, g, block.kernel, 1, "same", act=True)
            for j in range(block.layers)
        )
        self.out_channels = cin + block.layers * g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for unit in self.units:
            features.append(unit(torch.cat(features, dim=1)))  # (B, D + j * growth, W) in
        return torch.cat(features, dim=1)  # (B, D + layers * growth, W)


class TransitionBlock(nn.Module):
    def __init__(self, cfg: CNNConfig, block: TransitionBlockConfig, cin: int):
        super().__init__()
        self.unit = ConvUnit(cfg, cin, block.channels, 1, 1, 0, act=True)
        self.pool = _pool(block.pool, cfg.dims)
        self.out_channels = block.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.unit(x))


BLOCKS = {
    ConvBlockConfig: PlainBlock,
    ResidualBlockConfig: ResidualBlock,
    DenseBlockConfig: DenseBlock,
    TransitionBlockConfig: TransitionBlock,
}


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        layers = feature_plan(cfg, input_shape)  # raises ValueError naming a bad layer
        self.dims = cfg.dims
        blocks: list[nn.Module] = []
        channels = 1
        for block in cfg.blocks:
            blocks.append(BLOCKS[type(block)](cfg, block, channels))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        p = cfg.dropout
        self.block_dropout = nn.Dropout(p if cfg.dropout_at in ("blocks", "both") else 0.0)
        self.head_dropout = nn.Dropout(p if cfg.dropout_at in ("head", "both") else 0.0)
        features = 1
        for n in layers[-1].out_shape:
            features *= n
        widths = (features, *cfg.head, num_classes)
        self.head = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.act = ACTIVATIONS[cfg.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)  # (B, W) -> (B, 1, W)   [2-D: (B, H, W) -> (B, 1, H, W)]
        for block in self.blocks:
            h = self.block_dropout(block(h))  # (B, K, W')
        h = h.flatten(1)  # (B, K * W')
        for i, linear in enumerate(self.head):
            h = linear(self.head_dropout(h))
            if i < len(self.head) - 1:
                h = self.act(h)
        return h  # (B, num_classes)
