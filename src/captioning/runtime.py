"""Process set-up shared by the stage CLIs and flows: logging, thread and offline settings.

Import this before torch: OpenMP reads its environment when torch loads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

from captioning.errors import CaptioningError

_DEFAULTS = {
    # With 2 busy cores, spinning OpenMP threads starve a decoder of many small ops (300 -> 16 img/s).
    "OMP_WAIT_POLICY": "PASSIVE",
    # Offline and private by default: no analytics, no telemetry.
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TQDM_MININTERVAL": "2",
}


def setup(level: int = logging.INFO) -> None:
    """Configure the process once: environment defaults, malloc, plain timestamped logging."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    keep_large_allocations()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def keep_large_allocations() -> bool:
    """Stop glibc from returning every large tensor buffer to the kernel when it is freed.

    By default glibc serves allocations above 32 MB with mmap and unmaps them on free, so a CNN
    forward pass page-faults its activations afresh every batch: on 2 cores half the time went
    to the kernel and EfficientNet-Lite0 ran at 30 img/s instead of 55. Keeping freed memory in
    the heap for reuse removes that. A no-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    limit = ctypes.c_int(2**31 - 1)
    ok = libc.mallopt(m_mmap_threshold, limit) == 1
    ok &= libc.mallopt(m_trim_threshold, limit) == 1
    ok &= libc.mallopt(m_top_pad, ctypes.c_int(64 << 20)) == 1
    return bool(ok)


def start_forkserver(preload: list[str]) -> None:
    """Start multiprocessing's forkserver now, importing ``preload`` in it.

    DataLoader workers (forkserver context) fork from it instead of importing torch & co.
    themselves; started early, its imports overlap the caller's. Does not import torch
    itself; a no-op once a forkserver runs.
    """
    import multiprocessing
    from multiprocessing import forkserver

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return  # a child re-importing its parent's main module: not the place to start one
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    forkserver.ensure_running()


# The exit status of an input or set-up error (a CaptioningError), as argparse gives for bad usage.
EXIT_BAD_INPUT = 2


def exit_status(main: Callable[[], object]) -> int:
    """The one error handler of stages, flows and the ``captioning`` command: main()'s status
    (an int it returns, else 0), or EXIT_BAD_INPUT after logging a CaptioningError as one line.

    Any other exception propagates with its traceback: it is a bug, not the user's input.
    """
    try:
        status = main()
    except CaptioningError as exc:
        logging.getLogger("captioning").error("%s", exc)
        return EXIT_BAD_INPUT
    return status if isinstance(status, int) else 0


def run(main: Callable[[], object]) -> None:
    """Run a stage's or flow's main(); exit with its status if not 0 (see exit_status)."""
    status = exit_status(main)
    if status:
        sys.exit(status)
