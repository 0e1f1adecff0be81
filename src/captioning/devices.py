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


def autocast(device: torch.device) -> AbstractContextManager:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders feeding ``device`` should pin host memory."""
    return device.type == "cuda"
