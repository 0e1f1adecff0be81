"""The line every benchmark prints beside its ratios: figures are re-measured on other machines
of this kind, and a ratio means little without the CPU, the threads and the load it ran under.
Whether the CPU has bf16 arithmetic (avx512_bf16, AMX) decides what bf16 costs against fp32
(benchmarks/precision.py): without it torch emulates bf16. A benchmark run on a GPU also prints
the GPU's line (``device_line``)."""

from __future__ import annotations

import os
import platform

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def bf16_flags() -> str:
    """``avx512_bf16: no, amx_bf16: no`` from the CPU's flags (``unknown`` off Linux)."""
    flags = _cpuinfo_field("flags")
    if flags is None:
        return ", ".join(f"{flag}: unknown" for flag in BF16_FLAGS)
    present = set(flags.split())
    return ", ".join(f"{flag}: {'yes' if flag in present else 'no'}" for flag in BF16_FLAGS)


def machine_line(threads: int | None = None) -> str:
    """``CPU <model>, <n> cores, <threads> threads, load average <1> <5> <15>, avx512_bf16:
    <yes|no>, amx_bf16: <yes|no>``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    used = f", {threads} threads" if threads is not None else ""
    return f"CPU {cpu_model()}, {cores} cores{used}, load average {load}, {bf16_flags()}"


def device_line(device) -> str:
    """``GPU <name>, compute capability <x.y>, torch <version> CUDA <version>`` for a CUDA
    ``torch.device``; ``CPU`` otherwise (the machine line says which)."""
    import torch

    if device.type != "cuda":
        return "device: CPU"
    major, minor = torch.cuda.get_device_capability(device)
    return (
        f"device: GPU {torch.cuda.get_device_name(device)}, compute capability {major}.{minor}, "
        f"torch {torch.__version__} CUDA {torch.version.cuda}"
    )


def synchronize(device) -> None:
    """Wait for the work queued on a CUDA ``device`` (before reading a clock); a no-op on the
    CPU, whose work is done when its call returns."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
