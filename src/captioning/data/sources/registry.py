"""Dataset sources by name: each writes the internal layout (see captioning.data.layout)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from captioning.config import SOURCE_NAMES, FetchConfig, check_registry
from captioning.errors import UnknownNameError

logger = logging.getLogger(__name__)

# A fetch function writes ``out_dir`` and keeps what it downloads or extracts in
# ``downloads_dir`` (outside the DVC output, so a re-run neither downloads nor extracts again).
FetchFn = Callable[[FetchConfig, Path, Path], dict]


def _fetch_shapes(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.shapes import generate_shapes

    return generate_shapes(out_dir, cfg.shapes)


def _fetch_coco2014(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.coco import fetch_coco

    return fetch_coco(cfg, out_dir, downloads_dir, "2014")


def _fetch_coco2017(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.coco import fetch_coco

    return fetch_coco(cfg, out_dir, downloads_dir, "2017")


def _fetch_flickr8k(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.flickr import fetch_flickr8k

    return fetch_flickr8k(cfg, out_dir, downloads_dir)


def _fetch_flickr30k(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.flickr import fetch_flickr30k

    return fetch_flickr30k(cfg, out_dir, downloads_dir)


def _fetch_captcha(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    from captioning.data.sources.captcha import generate_captcha

    return generate_captcha(out_dir, cfg.captcha)


# name -> fetch function(cfg, out_dir, downloads_dir).
SOURCES: dict[str, FetchFn] = {
    "shapes": _fetch_shapes,
    "coco2014": _fetch_coco2014,
    "coco2017": _fetch_coco2017,
    "flickr8k": _fetch_flickr8k,
    "flickr30k": _fetch_flickr30k,
    "captcha": _fetch_captcha,
}
check_registry("source", SOURCES, SOURCE_NAMES, "SOURCE_NAMES")


def fetch(cfg: FetchConfig, out_dir: str | Path, downloads_dir: str | Path | None = None) -> dict:
    """Acquire ``cfg.source`` into ``out_dir`` (images/ + captions.json + splits.json).

    Downloads and extracted archives are kept in ``downloads_dir`` (default: ``downloads/``
    beside ``out_dir``).
    """
    if cfg.source not in SOURCES:
        raise UnknownNameError(f"unknown source {cfg.source!r}; choose one of {sorted(SOURCES)}")
    out_dir = Path(out_dir)
    downloads = Path(downloads_dir) if downloads_dir is not None else out_dir.parent / "downloads"
    logger.info("fetching source %r into %s", cfg.source, out_dir)
    return SOURCES[cfg.source](cfg, out_dir, downloads)
