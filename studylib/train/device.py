"""Where a run computes: the device, TF32 on CUDA, and the optional bf16 autocast."""

from __future__ import annotations

import contextlib

import torch

from studylib.config import Speed
from studylib.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device = cuda: no CUDA device is visible to torch here; allowed: auto, cpu"
        )
    if name == "cuda":
        enable_tf32()
    return torch.device(name)


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions (Ampere and later GPUs).

    A 10-bit mantissa inside the matmul, float32 everywhere else: the rounding is far below
    the seed-to-seed spread of any figure this study reports.
    """
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the API of torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_context(device: torch.device, speed: Speed) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes when asked for; a no-op context otherwise."""
    if speed.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
