"""Encoder-decoder Transformer (lecture notes: "Transformer", "Attention", cross-attention).

The encoder is the classifier's stack of pre-norm self-attention layers (transformer.py) over
the source tokens. Each decoder layer has three sublayers, each x = x + drop(f(LN(x))):
- causal self-attention over the target so far (token t sees targets 1..t);
- cross-attention: Q from the decoder, K and V from the encoder's output ("memory"), with the
  source's padding hidden; this is where the decoder reads the input;
- the feed-forward block.
Attention is transformer.py's MultiHeadAttention throughout (cross-attention passes `memory`).
The decoder writes characters whatever the encoder reads (data.tokenizer: characters, BPE
sub-words or words of the noisy spelling). When the encoder reads the decoder's characters, the
source and target share one embedding table by default (`share_embeddings`); a source with a
tokenizer of its own has its own table. Positions are the fixed sinusoids, so no length is baked
into the weights. A linear head gives next-token logits over the target's characters.

Training uses teacher forcing: forward(src, tgt_in) sees the true previous tokens and predicts
every next token at once. `greedy` decodes batched on the device for a fixed number of steps
(no host sync to test for <eos>); what follows the first <eos> is ignored when scoring.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studylib.models.common import FrozenConfig
from studylib.models.mlp import ACTIVATIONS
from studylib.models.transformer import (
    EncoderLayer,
    MultiHeadAttention,
    TransformerConfig,
    attention_allowed,
    sinusoids,
)
from studylib.tokens import BOS_ID, PAD_ID

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (B, h, S, d_k) each

Rate = float | None
MAX_POSITIONS = 512


class Seq2SeqConfig(FrozenConfig):
    """Reads a source sequence of token ids, writes a target sequence (data.name = 'spelling')."""

    arch: Literal["seq2seq"] = "seq2seq"
    d_model: int = Field(64, ge=2)
    heads: int = Field(4, ge=1, description="h; must divide d_model")
    encoder_layers: int = Field(2, ge=1)
    decoder_layers: int = Field(2, ge=1)
    ff: int = Field(128, ge=1, description="hidden width of each feed-forward block")
    activation: Literal[tuple(ACTIVATIONS)] = "gelu"
    dropout: float = Field(
        0.0, ge=0, lt=1, description="the swept rate; default of the three below"
    )
    embed_dropout: Rate = Field(None, ge=0, lt=1, description="on token + position embeddings")
    attn_dropout: Rate = Field(None, ge=0, lt=1, description="on the attention weights")
    resid_dropout: Rate = Field(None, ge=0, lt=1, description="on each residual branch")
    share_embeddings: bool | None = Field(
        None,
        description="one embedding table for source and target; only when the encoder reads "
        "characters (data.tokenizer = 'char'). None: shared under characters, else not",
    )

    @model_validator(mode="after")
    def _check(self) -> Seq2SeqConfig:
        if self.d_model % self.heads:
            raise ValueError(
                f"heads = {self.heads} must divide d_model = {self.d_model} (d_k = d_model / h)"
            )
        if self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        return self

    def rate(self, site: Rate) -> float:
        return self.dropout if site is None else site

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        if input_shape is not None:
            raise ValueError("seq2seq reads token ids (data.name = 'spelling')")

    def layer_config(self) -> TransformerConfig:
        """The encoder layers' settings, in the classifier's config (non-causal)."""
        return TransformerConfig(
            d_model=self.d_model,
            heads=self.heads,
            ff=self.ff,
            activation=self.activation,
            dropout=self.dropout,
            embed_dropout=self.embed_dropout,
            attn_dropout=self.attn_dropout,
            resid_dropout=self.resid_dropout,
        )


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        attn_dropout = cfg.rate(cfg.attn_dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, attn_dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, attn_dropout)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ff),
            ACTIVATIONS[cfg.activation](),
            nn.Linear(cfg.ff, cfg.d_model),
        )
        self.resid_dropout = nn.Dropout(cfg.rate(cfg.resid_dropout))

    def forward(
        self, y: torch.Tensor, memory: torch.Tensor, source_padding: torch.Tensor
    ) -> torch.Tensor:
        """y: (B, T, d) targets so far; memory: (B, S, d) encoder output; source_padding: (B, S)."""
        y = y + self.resid_dropout(self.self_attn(self.norm1(y), causal=True))  # (B, T, d)
        cross = self.cross_attn(self.norm2(y), source_padding, memory=memory)  # Q: y; K, V: memory
        y = y + self.resid_dropout(cross)
        return y + self.resid_dropout(self.ff(self.norm3(y)))

    def memory_keys_values(self, memory: torch.Tensor) -> KeysValues:
        """The cross-attention's keys and values of the memory: fixed while decoding."""
        attn = self.cross_attn
        return attn.split_heads(attn.w_k(memory)), attn.split_heads(attn.w_v(memory))

    def step(
        self, y: torch.Tensor, past: KeysValues, cross: KeysValues, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, KeysValues]:
        """`forward` for one new target token y (B, 1, d), given the self-attention keys and
        values of the tokens before it (`past`, grown by this one and returned) and those of
        the memory (`cross`; `allowed`: (B, 1, 1, S) unpadded source keys). The new token may
        see every earlier one, so no causal mask is needed; the result equals `forward`'s last
        position (tested)."""
        attn, cross_attn = self.self_attn, self.cross_attn
        a = self.norm1(y)
        k = torch.cat([past[0], attn.split_heads(attn.w_k(a))], dim=2)  # (B, h, t, d_k)
        v = torch.cat([past[1], attn.split_heads(attn.w_v(a))], dim=2)
        y = y + self.resid_dropout(attn.attend(attn.split_heads(attn.w_q(a)), k, v, None)[0])
        q = cross_attn.split_heads(cross_attn.w_q(self.norm2(y)))  # (B, h, 1, d_k)
        y = y + self.resid_dropout(cross_attn.attend(q, *cross, allowed)[0])
        return y + self.resid_dropout(self.ff(self.norm3(y))), (k, v)


class Seq2Seq(nn.Module):
    def __init__(
        self, cfg: Seq2SeqConfig, source_vocab: int, target_vocab: int, shared_vocab: bool
    ):
        """`shared_vocab`: the source's ids are the target's tokens (Splits.shared_vocab); the
        tables are then shared unless `cfg.share_embeddings` is False."""
        super().__init__()
        if cfg.share_embeddings and not shared_vocab:
            raise ValueError("share_embeddings: the source's tokens are not the target's")
        shared = shared_vocab and cfg.share_embeddings is not False
        if shared and source_vocab != target_vocab:
            raise ValueError(f"shared vocabularies of {source_vocab} and {target_vocab} tokens")
        self.d_model, self.heads = cfg.d_model, cfg.heads
        self.embed = nn.Embedding(target_vocab, cfg.d_model)  # the target's (and a shared source)
        self.register_buffer("position", sinusoids(MAX_POSITIONS, cfg.d_model)[None], False)
        self.embed_dropout = nn.Dropout(cfg.rate(cfg.embed_dropout))
        layer_cfg = cfg.layer_config()
        self.encoder = nn.ModuleList(EncoderLayer(layer_cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, target_vocab)
        # Made last: a shared model draws its weights exactly as before the option existed.
        self.source_embed = None if shared else nn.Embedding(source_vocab, cfg.d_model)

    def embed_tokens(self, ids: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        return self.embed_dropout(table(ids) + self.position[:, : ids.shape[1]])  # (B, T, d)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src: (B, S) ids -> memory (B, S, d) and its padding mask (B, S)."""
        padding = src == PAD_ID
        h = self.embed_tokens(src, self.embed if self.source_embed is None else self.source_embed)
        for layer in self.encoder:
            h = layer(h, padding)
        return self.encoder_norm(h), padding

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor):
        """tgt_in: (B, T) ids starting with <bos> -> next-token logits (B, T, vocab)."""
        y = self.embed_tokens(tgt_in, self.embed)
        for layer in self.decoder:
            y = layer(y, memory, padding)
        return self.head(self.decoder_norm(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, S) source, (B, T) target shifted right -> (B, T, vocab)."""
        memory, padding = self.encode(src)
        return self.decode(tgt_in, memory, padding)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, S) source -> (B, steps) tokens, each the argmax given the ones before.

        Incremental: each step runs the decoder on the newest token only, reusing the keys and
        values of earlier tokens and of the memory, so a step costs O(t), not O(t^2)."""
        memory, padding = self.encode(src)
        batch = len(src)
        allowed = attention_allowed(padding, False, 1, src.shape[1], src.device)  # (B, 1, 1, S)
        cross = [layer.memory_keys_values(memory) for layer in self.decoder]
        empty = memory.new_zeros(batch, self.heads, 0, self.d_model // self.heads)
        past = [(empty, empty) for _ in self.decoder]
        token = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src.device)
        out = []
        for t in range(steps):
            y = self.embed_dropout(self.embed(token) + self.position[:, t : t + 1])  # (B, 1, d)
            for i, layer in enumerate(self.decoder):
                y, past[i] = layer.step(y, past[i], cross[i], allowed)
            token = self.head(self.decoder_norm(y)).argmax(dim=-1)  # (B, 1)
            out.append(token)
        return torch.cat(out, dim=1)  # (B, steps)
