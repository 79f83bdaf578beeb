"""What several model families share: the frozen config base and sequence input handling.

Sequence models (RNN, Transformer) read an example as T steps of F features: an MNIST-1D
signal of shape (40,) is 40 steps of one scalar; an 8 x 8 digit image is 8 rows of 8 pixels.
`patch` groups that many consecutive steps into one step (or token) of patch * F features.
A padding mask marks padded steps with True (PyTorch's key_padding_mask convention); padding
must sit at the end of a sequence. MNIST-1D has none.

Text (studylib/data/text.py) arrives as (B, T) token ids, right-padded with PAD_ID; the data config
gives such input the shape None at load time, since the tokenizer decides T. Families that
read tokens embed them (`vocab_size` given to the model) and, when no mask is passed, take
`x == PAD_ID` as the padding mask.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from studylib.tokens import PAD_ID


class FrozenConfig(BaseModel):
    """Base of every model config: immutable, unknown keys rejected."""

    # inf and nan refused, as in every config (config.Frozen): no rate means anything there.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def reads_numbers(arch: str, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape, or ValueError for token ids (shape None), which this family cannot read."""
    if input_shape is None:
        raise ValueError(
            f"{arch} reads numbers, not token ids; allowed for text: textcnn, rnn, transformer"
        )
    return input_shape


def check_token_patch(patch: int) -> None:
    if patch != 1:
        raise ValueError(f"model.patch = {patch}: token ids are embedded one by one; allowed: 1")


def token_padding_mask(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) ids -> (B, T) mask, True at padding: the one given, else where x == PAD_ID."""
    return x == PAD_ID if padding_mask is None else padding_mask


def sequence_shape(input_shape: tuple[int, ...], patch: int) -> tuple[int, int]:
    """(steps, features per step) after patching, or ValueError saying what is wrong."""
    if len(input_shape) == 1:
        steps, features = input_shape[0], 1
    elif len(input_shape) == 2:
        steps, features = input_shape
    else:
        raise ValueError(
            f"a sequence model reads examples of shape (T,) or (T, F), got {input_shape}"
        )
    if steps % patch:
        raise ValueError(
            f"model.patch = {patch} does not divide the sequence length {steps}; "
            f"allowed: a divisor of {steps}"
        )
    return steps // patch, patch * features


def to_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T) or (B, T, F) -> (B, T / patch, patch * F)."""
    if x.dim() == 2:
        x = x.unsqueeze(-1)  # (B, T, 1)
    batch, steps, features = x.shape
    return x.reshape(batch, steps // patch, patch * features)


def token_padding(padding_mask: torch.Tensor | None, patch: int) -> torch.Tensor | None:
    """(B, T) step mask -> (B, T / patch) token mask: a token is padding if all its steps are."""
    if padding_mask is None or patch == 1:
        return padding_mask
    batch, steps = padding_mask.shape
    return padding_mask.reshape(batch, steps // patch, patch).all(dim=-1)


def masked_mean(h: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the step axis of (B, T, C), leaving out padded steps -> (B, C)."""
    if padding_mask is None:
        return h.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
