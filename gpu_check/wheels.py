"""The pure-Python packages the check needs that this Python lacks, from the wheels that travel
with the checkout (``gpu_check/wheels/``, gathered by ``make gpu-wheels``).

A distribution this Python already has is used as it is, whatever its version; each missing
one is unpacked from its wheel into a temporary folder that goes on the steps' PYTHONPATH. A
pure-Python wheel (``py3-none-any``) is a zip of the files as installed, so unpacking is the
whole install: no pip, no network.
"""

from __future__ import annotations

import importlib.metadata
import re
import zipfile
from pathlib import Path

WHEELS = Path(__file__).with_name("wheels")


def distribution_name(wheel: Path) -> str:
    """``pytest-9.2.0-py3-none-any.whl`` -> ``pytest``."""
    return wheel.name.split("-")[0]


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(re.sub(r"[-_.]+", "-", distribution))
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_wheels(folder: Path = WHEELS) -> list[Path]:
    """The wheels of ``folder`` whose distribution this Python does not have."""
    return [w for w in sorted(folder.glob("*.whl")) if not is_installed(distribution_name(w))]


def unpack(wheels: list[Path], site: Path) -> None:
    """Each wheel's files into ``site``, as pip would install a pure-Python wheel there."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        if not wheel.name.endswith("-none-any.whl"):
            raise ValueError(f"{wheel}: not a pure-Python wheel (*-none-any.whl)")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
