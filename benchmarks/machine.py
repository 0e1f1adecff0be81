"""The line every benchmark prints beside its ratios: figures are re-measured on other machines
of this kind, and a ratio means little without the CPU, the threads and the load it ran under."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int | None = None) -> str:
    """``CPU <model>, <n> cores, <threads> threads, load average <1> <5> <15>``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    used = f", {threads} threads" if threads is not None else ""
    return f"CPU {cpu_model()}, {cores} cores{used}, load average {load}"
