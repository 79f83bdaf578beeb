"""CNN for NLP (lecture notes: "CNN for NLP"; Kim 2014, "Convolutional Neural Networks for
Sentence Classification").

Tokens are embedded as a (T x d) matrix. A kernel of size F spans F tokens and the whole
embedding width ("kernel size 3 (x d)"): it is a Conv1d over the token axis with d input
channels, K filters each, (F x d + 1) x K parameters. Several kernel sizes run in parallel, "to
get different views of the data"; each filter's feature map is max-pooled over time (one
number per filter: did its pattern occur anywhere?), the pooled features are concatenated,
dropped out (the swept rate) and read by a linear head.

Padding: padded tokens enter as zero vectors (zero-padding, whatever their id's embedding), and
each sequence is also zero-padded by F - 1 on both sides ("wide" convolution), so a word shorter
than the kernel still has windows. Max-over-time reads only windows holding at least one real
token; windows over padding alone are masked. Extra padding at the end therefore changes
nothing (tested).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studylib.models.common import FrozenConfig, token_padding_mask
from studylib.models.mlp import ACTIVATIONS


class TextCNNConfig(FrozenConfig):
    """Reads token ids (text) only."""

    arch: Literal["textcnn"] = "textcnn"
    embed: int = Field(64, ge=1, description="d: width of the token embedding")
    kernels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (2, 3, 4), min_length=1, description="kernel sizes F (in tokens), one branch each"
    )
    filters: int = Field(64, ge=1, description="K: filters per kernel size")
    activation: Literal[tuple(ACTIVATIONS)] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="on the pooled features (swept rate)")

    @model_validator(mode="after")
    def _check(self) -> TextCNNConfig:
        if len(set(self.kernels)) != len(self.kernels):
            raise ValueError(f"kernels must differ, got {list(self.kernels)}")
        return self

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        if input_shape is not None:
            raise ValueError(
                "textcnn reads token ids (data.name = 'words'); for signals and images use cnn"
            )


class TextCNN(nn.Module):
    def __init__(self, cfg: TextCNNConfig, vocab_size: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.kernels = cfg.kernels
        # Branch i: Conv1d(d -> K, F_i, padding F_i - 1), i.e. a (F_i x d) kernel over tokens.
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.embed, cfg.filters, kernel, padding=kernel - 1) for kernel in cfg.kernels
        )
        self.act = ACTIVATIONS[cfg.activation]()
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(len(cfg.kernels) * cfg.filters, num_classes)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T) token ids; padding_mask: (B, T), True at padding (default x == PAD_ID)."""
        mask = token_padding_mask(x, padding_mask)  # (B, T)
        keep = (~mask).unsqueeze(-1)  # (B, T, 1)
        h = (self.embed(x) * keep).transpose(1, 2)  # (B, d, T), zero vectors at padding
        lengths = keep.sum(dim=1)  # (B, 1): real tokens
        pooled = []
        for kernel, conv in zip(self.kernels, self.convs, strict=True):
            maps = self.act(conv(h))  # (B, K, T + F - 1); window j spans tokens j-F+1 .. j
            window = torch.arange(maps.shape[-1], device=x.device)  # (T + F - 1,)
            # Window j holds a real token iff j - F + 1 < L, i.e. j < L + F - 1.
            real = (window < lengths + kernel - 1).unsqueeze(1)  # (B, 1, T + F - 1)
            pooled.append(maps.masked_fill(~real, float("-inf")).amax(dim=-1))  # (B, K)
        features = torch.cat(pooled, dim=-1)  # (B, len(kernels) * K)
        return self.head(self.dropout(features))  # (B, num_classes)
