"""Device choice, the precision a stage computes in, and the CUDA-only pinned memory.

``common.device`` (``auto | cpu | cuda | cuda:N``) is resolved by ``choose_device``: ``auto``
takes CUDA where torch sees it; ``cuda`` demands it (none is a one-line error).

``common.precision`` (``auto | fp32 | bf16 | fp16``) is resolved here, and only here, against
the device a process runs on (``resolve_precision``): ``auto`` is bf16 where the hardware has
bf16 arithmetic (a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute capability 8.0+), fp16
on an older CUDA GPU (training scales the loss), fp32 elsewhere. The same params can therefore
resolve differently on two machines; each stage records what it resolved to (the feature
cache's meta.json, the model's config.json, the training run's MLflow params).
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager

import torch

from captioning.config import DEVICE_CHOICES, DEVICE_PATTERN, PRECISIONS, ConfigError

logger = logging.getLogger(__name__)

# A resolved precision -> the dtype autocast runs in (None: fp32, no autocast at all).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# The /proc/cpuinfo flags of bf16 arithmetic, where torch cannot say.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_device(preferred: str = "auto", *, setting: str = "common.device") -> torch.device:
    """``common.device``: ``auto`` (CUDA if available, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. ``setting`` names where the value came from, for the error.

    A process computes on one device: ``cuda:N`` becomes the current CUDA device too.
    Demanding CUDA where there is none (a CPU-only torch, a broken driver, an index past the
    GPUs visible) fails here in one line rather than at the first tensor move, or worse, by
    training on the CPU unnoticed. A CUDA device gets TF32 for its fp32 work (``use_tf32``).
    """
    if not DEVICE_PATTERN.fullmatch(preferred):
        raise ConfigError(f"{setting}: expected {DEVICE_CHOICES}, found {preferred!r}")
    if preferred == "auto":
        preferred = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preferred)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{setting}: {preferred!r} requested but CUDA is not available to torch "
                f"{torch.__version__} (no GPU, no driver, or a CPU-only build); "
                "use auto or cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{setting}: {preferred!r} requested but {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)"
            )
        if device.index is not None:
            # The current device: bf16 support (resolve_precision), cuDNN and bare "cuda"
            # tensors follow it.
            torch.cuda.set_device(device)
        use_tf32()
    return device


def use_tf32() -> None:
    """fp32 matrix products and convolutions in TF32 on Ampere and later GPUs (a no-op on
    older ones): fp32 inputs rounded to a 10-bit mantissa, fp32 accumulation, several times
    the fp32 throughput. Only the CUDA flags: the CPU's arithmetic is untouched."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX); without it torch
    emulates bf16, slower than fp32."""
    checks = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU has bf16 arithmetic (compute capability 8.0+). bf16 that
    torch only emulates (a T4, an RTX 20xx: ``is_bf16_supported()``'s default answer is yes
    there) is slow and lacks cuDNN convolutions, so those GPUs get fp16."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(setting: str, device: torch.device) -> str:
    """``common.precision`` on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    fp16 on the CPU is refused: torch's CPU fp16 kernels are slow or missing without AMX-FP16,
    and bf16, as small as fp16, has fp32's range (no loss scaling)."""
    if setting not in PRECISIONS:
        raise ConfigError(
            f"common.precision: expected one of {list(PRECISIONS)}, found {setting!r}"
        )
    on_cuda = device.type == "cuda"
    if setting == "auto":
        if on_cuda:
            return "bf16" if cuda_has_native_bf16() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if setting == "fp16" and not on_cuda:
        raise ConfigError(
            f"common.precision: fp16 needs a CUDA device, this process runs on {device.type}; "
            "use bf16 or fp32 (or auto)"
        )
    if setting == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "common.precision bf16: this CPU has no bf16 arithmetic (avx512_bf16/AMX); torch "
            "emulates it, slower than fp32"
        )
    return setting


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed precision in the resolved ``precision``'s dtype; fp32 is no context at all, so
    that an fp32 run computes exactly as without this."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pin_memory(device: torch.device) -> bool:
    """Whether DataLoaders feeding ``device`` should pin host memory."""
    return device.type == "cuda"
