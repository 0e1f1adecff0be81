"""Dataset sources by name: each writes the internal layout (see captioning.data.layout)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from captioning.config import FetchConfig

logger = logging.getLogger(__name__)


def _fetch_shapes(cfg: FetchConfig, out_dir: Path) -> dict:
    from captioning.data.sources.shapes import generate_shapes

    return generate_shapes(out_dir, cfg.shapes)


# name -> fetch function(cfg, out_dir). COCO, Flickr and CAPTCHA register here as they land.
SOURCES: dict[str, Callable[[FetchConfig, Path], dict]] = {
    "shapes": _fetch_shapes,
}


def fetch(cfg: FetchConfig, out_dir: str | Path) -> dict:
    """Acquire ``cfg.source`` into ``out_dir`` (images/ + captions.json + splits.json)."""
    if cfg.source not in SOURCES:
        raise ValueError(f"unknown source {cfg.source!r}; choose one of {sorted(SOURCES)}")
    logger.info("fetching source %r into %s", cfg.source, out_dir)
    return SOURCES[cfg.source](cfg, Path(out_dir))
