"""Transformer encoder classifier (lecture notes: "Transformer", "Attention").

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O
    head_i = softmax(mask(Q_i K_i^T / sqrt(d_k))) V_i,   Q = X W^Q, K = X W^K, V = X W^V
    d_k = d_v = d_model / h

Self-attention: Q, K and V all come from the same tokens X. Cross-attention (used by the
encoder-decoder in seq2seq.py): Q comes from one sequence, K and V from another (`memory`).
Attention is written out plainly below and tested against
torch.nn.functional.scaled_dot_product_attention on the same weights.
Masks: a key-padding mask hides padded tokens from every query; a causal mask hides later
tokens (token t sees tokens 1..t). A hidden key gets exactly zero weight.

Tokens: each step (or each `patch` of steps) is embedded by a linear map (text: each token id
by an embedding table, padding masked where x == PAD_ID); positions enter as a
learned table or as the fixed sinusoids PE(pos, 2i) = sin(pos / 10000^(2i / d_model)),
PE(pos, 2i + 1) = cos(...), added to the embeddings, since attention alone ignores order
("Sequentiality" in the notes): with `positional = "none"` and no causal mask the model is
invariant to any permutation of its tokens (tested). Each layer is pre-norm:
    x = x + drop(MultiHead(LN(x))),   x = x + drop(FFN(LN(x)))
The classifier reads a learned class token prepended to the sequence, or the mean of the tokens.
Dropout sites, each a knob that follows the swept `dropout` unless set: the embeddings, the
attention weights, and each residual branch (the `drop` above).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from studylib.models.common import (
    FrozenConfig,
    check_token_patch,
    masked_mean,
    sequence_shape,
    to_tokens,
    token_padding,
    token_padding_mask,
)
from studylib.models.mlp import ACTIVATIONS

Rate = float | None


class TransformerConfig(FrozenConfig):
    """Examples of shape (T,) (MNIST-1D: 40 scalar steps) or (T, F) (digits: 8 rows of 8)."""

    arch: Literal["transformer"] = "transformer"
    d_model: int = Field(64, ge=1)
    heads: int = Field(4, ge=1, description="h; must divide d_model")
    layers: int = Field(2, ge=1)
    ff: int = Field(128, ge=1, description="hidden width of each feed-forward block")
    activation: Literal[tuple(ACTIVATIONS)] = "gelu"
    patch: int = Field(4, ge=1, description="input steps embedded as one token")
    positional: Literal["learned", "sinusoidal", "none"] = Field(
        "learned", description="none: no positions, so without a causal mask order is invisible"
    )
    pooling: Literal["cls", "mean"] = "cls"
    causal: bool = Field(False, description="each token attends to itself and earlier ones only")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="the swept rate; default of the three below"
    )
    embed_dropout: Rate = Field(None, ge=0, lt=1, description="on token + position embeddings")
    attn_dropout: Rate = Field(None, ge=0, lt=1, description="on the attention weights")
    resid_dropout: Rate = Field(None, ge=0, lt=1, description="on each residual branch")

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(
                f"heads = {self.heads} must divide d_model = {self.d_model} (d_k = d_model / h)"
            )
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        return self

    def rate(self, site: Rate) -> float:
        return self.dropout if site is None else site

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        if input_shape is None:
            check_token_patch(self.patch)
        else:
            sequence_shape(input_shape, self.patch)


def attention_allowed(
    key_padding_mask: torch.Tensor | None, causal: bool, queries: int, keys: int, device
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, T_q, T_k) mask, True where a query may attend to a key."""
    allowed = None
    if causal:
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T_k)
        allowed = keep if allowed is None else allowed & keep
    return allowed


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.w_q = nn.Linear(d_model, d_model)  # the h heads' W^Q_i side by side
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)  # W^O
        self.attn_dropout = nn.Dropout(attn_dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = x.shape
        return x.view(batch, steps, self.heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        return_weights: bool = False,
        memory: torch.Tensor | None = None,
    ):
        """Self-attention over x (B, T, d_model); with `memory` (B, S, d_model), cross-attention:
        queries from x, keys and values from memory (key_padding_mask then masks memory)."""
        steps = x.shape[1]  # x: (B, T, d_model)
        source = x if memory is None else memory  # (B, S, d_model); S = T for self-attention
        q = self.split_heads(self.w_q(x))  # (B, h, T, d_k)
        k = self.split_heads(self.w_k(source))  # (B, h, S, d_k)
        v = self.split_heads(self.w_v(source))
        allowed = attention_allowed(key_padding_mask, causal, steps, source.shape[1], x.device)
        out, weights = self.attend(q, k, v, allowed)
        return (out, weights) if return_weights else out

    def attend(self, q, k, v, allowed: torch.Tensor | None):
        """Projected heads q (B, h, T, d_k), k and v (B, h, S, d_k) -> output (B, T, d_model)
        and the weights (B, h, T, S). `allowed`: True where a query may see a key."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, h, T, S)
        if allowed is not None:
            # The most negative finite number, not -inf: a hidden key's weight is exp(-huge)
            # = 0 exactly, and a query with every key hidden gets no NaN.
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)  # (B, h, T, S), rows sum to 1
        heads = self.attn_dropout(weights) @ v  # (B, h, T, d_k)
        batch, _, steps, _ = heads.shape
        out = heads.transpose(1, 2).reshape(batch, steps, -1)  # Concat(head_1..head_h)
        return self.w_o(out), weights  # (B, T, d_model)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.rate(cfg.attn_dropout))
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ff),
            ACTIVATIONS[cfg.activation](),
            nn.Linear(cfg.ff, cfg.d_model),
        )
        self.resid_dropout = nn.Dropout(cfg.rate(cfg.resid_dropout))
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.norm1(x), padding, self.causal))  # (B, T, d)
        return x + self.resid_dropout(self.ff(self.norm2(x)))


def sinusoids(steps: int, d_model: int) -> torch.Tensor:
    """(steps, d_model): PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pos = torch.arange(steps, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d/2,)
    angle = pos / 10000 ** (two_i / d_model)  # (T, d/2)
    table = torch.zeros(steps, d_model)
    table[:, 0::2], table[:, 1::2] = angle.sin(), angle.cos()
    return table


class Transformer(nn.Module):
    def __init__(
        self,
        cfg: TransformerConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.patch, self.pooling = cfg.patch, cfg.pooling
        self.tokens = vocab_size is not None
        if self.tokens:  # token ids: (T,) -> T embedded tokens
            check_token_patch(cfg.patch)
            steps = input_shape[0]
            self.embed = nn.Embedding(vocab_size, cfg.d_model)
        else:
            steps, features = sequence_shape(input_shape, cfg.patch)
            self.embed = nn.Linear(features, cfg.d_model)
        positions = steps + (cfg.pooling == "cls")
        if cfg.pooling == "cls":
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
            nn.init.normal_(self.cls, std=0.02)
        if cfg.positional == "learned":
            self.position = nn.Parameter(torch.zeros(1, positions, cfg.d_model))
            nn.init.normal_(self.position, std=0.02)
        elif cfg.positional == "sinusoidal":
            self.register_buffer("position", sinusoids(positions, cfg.d_model)[None], False)
        else:  # none: attention and the position-wise layers treat the tokens as a set
            self.position = None
        self.embed_dropout = nn.Dropout(cfg.rate(cfg.embed_dropout))
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, num_classes)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T) or (B, T, F) numbers, or (B, T) token ids; padding_mask: (B, T), True at
        padded steps (token ids: x == PAD_ID when not given)."""
        if self.tokens:
            h = self.embed(x)  # (B, T, d_model)
            padding = token_padding_mask(x, padding_mask)  # (B, T)
        else:
            h = self.embed(to_tokens(x, self.patch))  # (B, T, d_model)
            padding = token_padding(padding_mask, self.patch)  # (B, T) or None
        if self.pooling == "cls":
            h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)  # (B, 1 + T, d_model)
            if padding is not None:
                padding = F.pad(padding, (1, 0), value=False)  # the class token is never padding
        h = self.embed_dropout(h if self.position is None else h + self.position)
        for layer in self.layers:
            h = layer(h, padding)
        h = self.norm(h)
        pooled = h[:, 0] if self.pooling == "cls" else masked_mean(h, padding)  # (B, d_model)
        return self.head(pooled)  # (B, num_classes)
