"""Flickr8k (both layouts found in the wild) and Flickr30k.

``fetch.flickr8k.files`` / ``fetch.flickr30k.files`` list URLs or local paths: archives (which
are extracted), directories or single files. The layout is recognised by what they contain:

- Flickr8k, original: ``Flicker8k_Dataset/`` (sic) + ``Flickr8k.token.txt`` (lines
  ``name.jpg#0<TAB>caption``) + ``Flickr_8k.{train,dev,test}Images.txt``.
- Flickr8k, Kaggle: ``Images/`` + ``captions.txt`` (CSV, header ``image,caption``). It has no
  split: add ``Flickr_8k.*Images.txt`` (e.g. Flickr8k_text.zip) or Karpathy's
  ``dataset_flickr8k.json`` to the files.
- Flickr30k: the images (e.g. ``flickr30k-images/``) + Karpathy's ``dataset_flickr30k.json``,
  which holds the captions and the split.

Both Flickr8k layouts give the same internal layout: image ids are the Flickr photo ids that
start the file names, images are ordered by id within each split, captions keep file order.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from captioning.config import FetchConfig
from captioning.data.layout import AnnotationError
from captioning.data.sources.common import (
    LayoutBuilder,
    SourceError,
    find_names,
    gather,
    photo_ids,
    read_karpathy,
)

logger = logging.getLogger(__name__)

_ORIGINAL_IMAGES = ("Flicker8k_Dataset", "Flickr8k_Dataset")
_TOKENS = "Flickr8k.token.txt"
_KAGGLE_IMAGES, _KAGGLE_CAPTIONS = "Images", "captions.txt"
_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_KARPATHY_8K, _KARPATHY_30K = "dataset_flickr8k.json", "dataset_flickr30k.json"


def fetch_flickr8k(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    """Acquire Flickr8k (original or Kaggle layout) and write the internal layout."""
    roots = _roots("flickr8k", cfg.flickr8k.files, cfg, downloads_dir, cfg.flickr8k.checksums)
    found = find_names(
        roots,
        [*_ORIGINAL_IMAGES, _TOKENS, _KAGGLE_IMAGES, _KAGGLE_CAPTIONS, *_SPLIT_FILES.values()]
        + [_KARPATHY_8K],
    )
    layout = cfg.flickr8k.layout
    original_images = next((found[n] for n in _ORIGINAL_IMAGES if n in found), None)
    if layout == "auto":
        # Flickr8k_text.zip (with the token file) often comes with the Kaggle images for its
        # split files: the images folder decides.
        kaggle = _KAGGLE_IMAGES in found and _KAGGLE_CAPTIONS in found
        layout = "original" if original_images or not kaggle else "kaggle"
    if layout == "original":
        _require_found(found, [_TOKENS], "the original Flickr8k layout", roots)
        if original_images is None:
            _require_found(found, [_ORIGINAL_IMAGES[0]], "the original Flickr8k layout", roots)
        captions = read_token_file(found[_TOKENS])
        image_dir = original_images
    else:
        _require_found(
            found, [_KAGGLE_IMAGES, _KAGGLE_CAPTIONS], "the Kaggle Flickr8k layout", roots
        )
        captions = read_kaggle_captions(found[_KAGGLE_CAPTIONS])
        image_dir = found[_KAGGLE_IMAGES]
    assert image_dir is not None
    if all(name in found for name in _SPLIT_FILES.values()):
        splits = {split: read_split_file(found[name]) for split, name in _SPLIT_FILES.items()}
    elif _KARPATHY_8K in found:
        splits = _karpathy_names(found[_KARPATHY_8K])
    else:
        raise SourceError(
            f"flickr8k ({layout} layout): no split found; add Flickr8k_text.zip (with "
            f"{', '.join(_SPLIT_FILES.values())}) or Karpathy's {_KARPATHY_8K} to "
            "fetch.flickr8k.files"
        )
    logger.info("flickr8k: %s layout, images in %s", layout, image_dir)
    return _write("flickr8k", out_dir, image_dir, splits, captions, {"layout": layout})


def fetch_flickr30k(cfg: FetchConfig, out_dir: Path, downloads_dir: Path) -> dict:
    """Acquire Flickr30k (images + dataset_flickr30k.json) and write the internal layout."""
    roots = _roots("flickr30k", cfg.flickr30k.files, cfg, downloads_dir, cfg.flickr30k.checksums)
    found = find_names(roots, [_KARPATHY_30K])
    _require_found(found, [_KARPATHY_30K], "Flickr30k", roots)
    entries = read_karpathy(found[_KARPATHY_30K])
    if not entries:
        raise AnnotationError(f"{found[_KARPATHY_30K]}: 'images' is empty")
    first = entries[0].filename
    located = find_names(roots, [first])
    if first not in located:
        raise SourceError(
            f"flickr30k: {first} (the first image of {_KARPATHY_30K}) is in none of "
            f"fetch.flickr30k.files: {[str(r) for r in roots]}"
        )
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    captions = {}
    for entry in entries:
        splits[entry.split].append(entry.filename)
        captions[entry.filename] = list(entry.sentences)
    return _write("flickr30k", out_dir, located[first].parent, splits, captions, {})


def read_token_file(path: Path) -> dict[str, list[str]]:
    """``Flickr8k.token.txt``: ``name.jpg#N<TAB>caption`` per line -> {name: [captions]}."""
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        ref, tab, caption = line.partition("\t")
        name, hash_, index = ref.rpartition("#")
        if not tab or not hash_ or not index.isdigit() or not caption.strip():
            raise AnnotationError(
                f"{path}: line {number}: expected 'name.jpg#N<TAB>caption', found {line[:80]!r}"
            )
        captions.setdefault(name, []).append(caption.strip())
    return captions


def read_kaggle_captions(path: Path) -> dict[str, list[str]]:
    """Kaggle's ``captions.txt``: CSV with header ``image,caption`` -> {name: [captions]}."""
    captions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header != ["image", "caption"]:
            raise AnnotationError(
                f"{path}: line 1: expected the header 'image,caption', found {header}"
            )
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            # Unquoted commas inside a caption split it into more fields: join them back.
            name, caption = row[0].strip(), ",".join(row[1:]).strip()
            if not name or not caption:
                raise AnnotationError(
                    f"{path}: line {number}: expected 'image,caption', found {row}"
                )
            captions.setdefault(name, []).append(caption)
    return captions


def read_split_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _karpathy_names(path: Path) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for entry in read_karpathy(path):
        splits[entry.split].append(entry.filename)
    return splits


def _roots(
    source: str,
    files: list[str],
    cfg: FetchConfig,
    downloads_dir: Path,
    checksums: dict[str, str],
) -> list[Path]:
    if not files:
        raise SourceError(
            f"{source}: fetch.{source}.files is empty: list the URLs or local paths of its "
            "archives, folders or files (see docs/gpu-coco.md)"
        )
    return gather(files, downloads_dir, mirror=cfg.mirror, checksums=checksums)


def _require_found(found: dict[str, Path], names: list[str], what: str, roots: list[Path]) -> None:
    missing = [name for name in names if name not in found]
    if missing:
        raise SourceError(f"{what}: {', '.join(missing)} not found in {[str(r) for r in roots]}")


def _write(
    source: str,
    out_dir: Path,
    image_dir: Path,
    splits: dict[str, list[str]],
    captions: dict[str, list[str]],
    info: dict,
) -> dict:
    names = [name for split_names in splits.values() for name in split_names]
    ids = photo_ids(names)
    builder = LayoutBuilder(source)
    for split, split_names in splits.items():
        for name in sorted(set(split_names), key=ids.__getitem__):
            builder.add(ids[name], name, image_dir / name, split, captions.get(name, ()))
    without = sum(1 for name in names if name not in captions)
    if without:
        logger.warning("%s: %d images in the split have no captions", source, without)
    return builder.write(out_dir, info)
