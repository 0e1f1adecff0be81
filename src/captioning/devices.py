"""Device choice and the CUDA-only speed-ups (autocast, pinned memory)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def choose_device(preferred: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else CPU. Anything else is a torch device string.

    Asking for CUDA on a machine without it fails here rather than at the first tensor move.
    """
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {preferred!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preferred!r} requested but CUDA is not available")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs in on ``device``: bf16 on a CUDA GPU with bf16 arithmetic
    (compute capability 8.0+), fp16 on an older one, None (fp32, no autocast) elsewhere.

    bf16 that torch only emulates (a T4, an RTX 20xx: ``is_bf16_supported()``'s default
    answer is yes there) is slow and lacks cuDNN convolutions, so those GPUs get fp16, with
    loss scaling in training."""
    if device.type != "cuda":
        return None
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def autocast(device: torch.device) -> AbstractContextManager:
    """Mixed precision on CUDA in ``autocast_dtype(device)``; a no-op elsewhere."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders feeding ``device`` should pin host memory."""
    return device.type == "cuda"
