"""SPICE (Anderson et al. 2016) through pycocoevalcap, only when its Stanford CoreNLP jars exist.

pycocoevalcap's ``Spice()`` downloads Stanford CoreNLP 3.6.0 (~400 MB) the first time it is
built, which hangs or fails offline. The jars are checked here first: without them SPICE is
skipped with one log line that names them and where they go, and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# pycocoevalcap 1.2's spice/get_stanford_models.py extracts these two files of
# stanford-corenlp-full-2015-12-09.zip into spice/lib/, where spice-1.0.jar's classpath looks.
CORENLP_ZIP = "stanford-corenlp-full-2015-12-09.zip"
CORENLP_URL = f"http://nlp.stanford.edu/software/{CORENLP_ZIP}"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_lib_dir() -> Path:
    """pycocoevalcap's spice/lib folder (found without importing pycocoevalcap)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pycocoevalcap is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "spice" / "lib"


def missing_spice_jars(lib_dir: Path | None = None) -> list[str]:
    lib_dir = lib_dir or spice_lib_dir()
    return [name for name in CORENLP_JARS if not (lib_dir / name).is_file()]


def skip_message(missing: Sequence[str], lib_dir: Path) -> str:
    return (
        f"SPICE skipped: Stanford CoreNLP jars {', '.join(missing)} not found in {lib_dir} "
        f"(copy them there from {CORENLP_ZIP}, {CORENLP_URL})"
    )


def spice_available(lib_dir: Path | None = None) -> bool:
    """True when SPICE can run; otherwise False and one log line saying what is missing."""
    lib_dir = lib_dir or spice_lib_dir()
    missing = missing_spice_jars(lib_dir)
    if missing:
        logger.warning("%s", skip_message(missing, lib_dir))
        return False
    if shutil.which("java") is None:
        logger.warning("SPICE skipped: no `java` on PATH")
        return False
    return True


def spice_scores(
    gts: Mapping[Any, list[str]],
    res: Mapping[Any, list[str]],
    *,
    lib_dir: Path | None = None,
) -> tuple[float, dict[Any, float]] | None:
    """Corpus SPICE and per-image SPICE F-scores, or None (logged once) when it cannot run.

    ``gts``/``res`` are PTB-tokenised as for the other pycocoevalcap scorers.
    """
    if not spice_available(lib_dir):
        return None
    try:
        corpus, per_image = _compute(gts, res)
    except (subprocess.CalledProcessError, OSError) as exc:
        # E.g. too little memory for its -Xmx8G JVM: the other metrics still count.
        logger.warning("SPICE skipped: the SPICE jar failed (%s)", exc)
        return None
    return corpus, per_image


def _compute(
    gts: Mapping[Any, list[str]], res: Mapping[Any, list[str]]
) -> tuple[float, dict[Any, float]]:
    from pycocoevalcap.spice.spice import Spice

    ids = sorted(gts)
    corpus, scores = Spice().compute_score(dict(gts), dict(res))
    per_image = {i: float(s["All"]["f"]) for i, s in zip(ids, scores, strict=True)}
    return float(corpus), per_image
