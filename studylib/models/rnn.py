"""Recurrent classifiers: vanilla RNN, LSTM and GRU (lecture notes: "RNN", "LSTM",
"Bidirectional and Multi-layer RNNs").

The same weights apply at every step t to the input x_t and the previous state h_{t-1}:
- vanilla RNN:  h_t = tanh(W h_{t-1} + U x_t + b)
- LSTM, with a cell state c_t that the gates read, erase and write:
      f_t = sigma(W_f h_{t-1} + U_f x_t + b_f)      forget gate
      i_t = sigma(W_i h_{t-1} + U_i x_t + b_i)      input gate
      o_t = sigma(W_o h_{t-1} + U_o x_t + b_o)      output gate
      c_t = f_t * c_{t-1} + i_t * tanh(W_c h_{t-1} + U_c x_t + b_c)
      h_t = o_t * tanh(c_t)
- GRU (not in the notes; PyTorch's form): reset r_t and update z_t gates,
      n_t = tanh(U_n x_t + b_n + r_t * (W_n h_{t-1} + b'_n)),  h_t = (1 - z_t) * n_t + z_t * h_{t-1}
Bidirectional: a second RNN reads the sequence backwards, h_t = [h_fwd_t; h_bwd_t].
Multi-layer: layer l + 1 reads layer l's states; dropout (the swept rate) acts between layers
and on the features the classifier reads.

torch.nn.RNN / LSTM / GRU compute exactly these equations (tests check one step of each
against the formulas). Text: token ids are embedded (x_t = E[token_t], `embed` wide) and
padded steps are masked (studylib/models/common.py). The classifier reads the last state (forward: step T; backward: step 1),
the mean or max of all states, or all states flattened (the MNIST-1D paper's GRU).
Vanishing and exploding gradients: see `train.grad_clip` and `train.grad_norms`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from studylib.models.common import (
    FrozenConfig,
    check_token_patch,
    masked_mean,
    sequence_shape,
    to_tokens,
    token_padding,
    token_padding_mask,
)

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNConfig(FrozenConfig):
    """Examples of shape (T,) (MNIST-1D: 40 scalar steps) or (T, F) (digits: 8 rows of 8), or
    token ids (text)."""

    arch: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "lstm", "gru"] = Field("gru", description="rnn is the tanh RNN")
    hidden: int = Field(64, ge=1, description="state size per direction")
    layers: int = Field(1, ge=1)
    bidirectional: bool = False
    patch: int = Field(1, ge=1, description="input steps read as one RNN step")
    readout: Literal["last", "mean", "max", "flatten"] = Field(
        "last", description="what the linear classifier reads: final state, pooled or all states"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="between layers and before the classifier (swept rate)"
    )
    embed: int = Field(32, ge=1, description="text: width of the token embedding")

    def check_input(self, input_shape: tuple[int, ...] | None) -> None:
        if input_shape is None:
            check_token_patch(self.patch)
        else:
            sequence_shape(input_shape, self.patch)


class RNN(nn.Module):
    def __init__(
        self,
        cfg: RNNConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.embed = None
        if vocab_size is None:
            steps, features = sequence_shape(input_shape, cfg.patch)
        else:  # token ids: (T,) -> T embedded steps
            check_token_patch(cfg.patch)
            steps, features = input_shape[0], cfg.embed
            self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.patch, self.readout = cfg.patch, cfg.readout
        self.directions = 2 if cfg.bidirectional else 1
        self.rnn = CELLS[cfg.cell](
            features,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,  # torch: between layers only
            bidirectional=cfg.bidirectional,
        )
        width = self.directions * cfg.hidden
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width * steps if cfg.readout == "flatten" else width, num_classes)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T) or (B, T, F) numbers, or (B, T) token ids; padding_mask: (B, T), True at
        padded steps (right-padded; token ids: x == PAD_ID when not given)."""
        if self.embed is not None:
            mask = token_padding_mask(x, padding_mask)  # (B, T)
            tokens = self.embed(x)  # (B, T, E)
        else:
            tokens = to_tokens(x, self.patch)  # (B, T, F)
            mask = token_padding(padding_mask, self.patch)  # (B, T) or None
        steps = tokens.shape[1]
        if mask is None:
            states, last = self.rnn(tokens)  # (B, T, dirs * H), (layers * dirs, B, H)
        elif self.directions == 1:
            # A forward state at a real step never saw the padding after it: no packing needed
            # (packing wants the lengths on the host, a sync per batch). Read step L - 1.
            states, _ = self.rnn(tokens)  # (B, T, H)
            final = (~mask).sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real step
            last = states.gather(1, final.view(-1, 1, 1).expand(-1, 1, states.shape[-1]))
            last = last.transpose(0, 1)  # (1, B, H): the top layer's final state
        else:
            # Packing makes each direction stop (or start) at a sequence's last real step.
            lengths = (~mask).sum(dim=1).cpu()  # a host sync: bidirectional with masks only
            packed = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False)
            states, last = self.rnn(packed)
            states, _ = pad_packed_sequence(states, batch_first=True, total_length=steps)
        if isinstance(last, tuple):
            last = last[0]  # LSTM: (h_n, c_n); the classifier reads h
        return self._classify(states, last, mask)

    def _classify(
        self, states: torch.Tensor, last: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits from the top layer's states (B, T, dirs * H) and final states
        (layers * dirs, B, H), by the configured readout."""
        if self.readout == "last":
            # Top layer's final states of both directions: h = [h_fwd_T; h_bwd_1].
            features = torch.cat(list(last[-self.directions :]), dim=-1)  # (B, dirs * H)
        elif self.readout == "mean":
            features = masked_mean(states, mask)  # (B, dirs * H)
        elif self.readout == "max":
            if mask is not None:
                states = states.masked_fill(mask.unsqueeze(-1), float("-inf"))
            features = states.amax(dim=1)  # (B, dirs * H)
        else:
            if mask is not None:
                states = states.masked_fill(mask.unsqueeze(-1), 0.0)
            features = states.flatten(1)  # (B, T * dirs * H)
        return self.head(self.dropout(features))  # (B, num_classes)

    def step_by_step(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """The forward pass one step at a time: (logits, each step's state). The state of step
        t is (h_t,) or, for the LSTM, (h_t, c_t), every layer's; everything after step t reads
        it, so the loss's gradient with respect to it is dL/dh_t through all later steps (the
        fused `nn.RNN` hides the states inside one kernel). Same weights, same logits as
        `forward` up to float rounding. Numbers only, one direction: a backward direction
        reads the sequence from its end, so it has no "state after step t"."""
        if self.directions != 1 or self.embed is not None:
            raise ValueError("step_by_step reads numbers with one direction")
        tokens = to_tokens(x, self.patch)  # (B, T, F)
        state = None
        states, tops = [], []
        for t in range(tokens.shape[1]):
            _, state = self.rnn(tokens[:, t : t + 1], state)
            parts = state if isinstance(state, tuple) else (state,)
            states.append(parts)
            tops.append(parts[0][-1])  # (B, H): the top layer's h_t, read from the state
        last = states[-1][0]  # (layers, B, H)
        return self._classify(torch.stack(tops, dim=1), last, None), states

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per layer and direction, for the `grad_norm/<layer>` metric."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.rnn.named_parameters():
            # weight_ih_l0, bias_hh_l1_reverse -> rnn.l0, rnn.l1_reverse
            layer = name.split("_l", 1)[1]
            groups.setdefault(f"rnn.l{layer}", []).append(param)
        if self.embed is not None:
            groups = {"embed": list(self.embed.parameters()), **groups}
        groups["head"] = list(self.head.parameters())
        return groups
