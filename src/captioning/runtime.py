"""Process set-up shared by the stage CLIs and flows: logging, thread and offline settings.

Import this before torch: OpenMP reads its environment when torch loads.
"""

from __future__ import annotations

import logging
import os
import sys

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
    """Configure the process once: environment defaults and plain, timestamped logging."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
