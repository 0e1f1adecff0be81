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
import io
import logging
from pathlib import Path

from captioning.config import FetchConfig
from captioning.data.layout import AnnotationError, inside, read_utf8
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
        image_dir = original_images
        assert image_dir is not None
        captions = read_token_file(found[_TOKENS], image_dir)
    else:
        _require_found(
            found, [_KAGGLE_IMAGES, _KAGGLE_CAPTIONS], "the Kaggle Flickr8k layout", roots
        )
        image_dir = found[_KAGGLE_IMAGES]
        captions = read_kaggle_captions(found[_KAGGLE_CAPTIONS], image_dir)
    if all(name in found for name in _SPLIT_FILES.values()):
        splits = {
            split: read_split_file(found[name], image_dir) for split, name in _SPLIT_FILES.items()
        }
    elif _KARPATHY_8K in found:
        splits = _karpathy_names(found[_KARPATHY_8K], image_dir)
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
    image_dir = located[first].parent
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    captions = {}
    for i, entry in enumerate(entries):
        inside(image_dir, entry.filename, f"{found[_KARPATHY_30K]}: images[{i}].filename")
        splits[entry.split].append(entry.filename)
        captions[entry.filename] = list(entry.sentences)
    return _write("flickr30k", out_dir, image_dir, splits, captions, {})


def read_token_file(path: Path, image_dir: Path) -> dict[str, list[str]]:
    """``Flickr8k.token.txt``: ``name.jpg#N<TAB>caption`` per line -> {name: [captions]}.

    Each name must name a file in ``image_dir``; blank captions are kept for the layout
    builder to skip and count."""
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        ref, tab, caption = line.partition("\t")
        name, hash_, index = ref.rpartition("#")
        if not tab or not hash_ or not index.isdigit():
            raise AnnotationError(
                f"{path}: line {number}: expected 'name.jpg#N<TAB>caption', found {line[:80]!r}"
            )
        inside(image_dir, name, f"{path}: line {number}")
        captions.setdefault(name, []).append(caption)
    return captions


def read_kaggle_captions(path: Path, image_dir: Path) -> dict[str, list[str]]:
    """Kaggle's ``captions.txt``: CSV with header ``image,caption`` -> {name: [captions]}.

    Each name must name a file in ``image_dir``; blank captions are kept for the layout
    builder to skip and count."""
    captions: dict[str, list[str]] = {}
    rows = csv.reader(io.StringIO(read_utf8(path), newline=""))
    header = next(rows, None)
    if header != ["image", "caption"]:
        raise AnnotationError(
            f"{path}: line 1: expected the header 'image,caption', found {header}"
        )
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        # Unquoted commas inside a caption split it into more fields: join them back.
        name, caption = row[0].strip(), ",".join(row[1:])
        if not name or len(row) < 2:
            raise AnnotationError(f"{path}: line {number}: expected 'image,caption', found {row}")
        inside(image_dir, name, f"{path}: line {number}")
        captions.setdefault(name, []).append(caption)
    return captions


def read_split_file(path: Path, image_dir: Path) -> list[str]:
    """``Flickr_8k.*Images.txt``: one image name per line, each naming a file in ``image_dir``."""
    names = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if line.strip():
            inside(image_dir, line.strip(), f"{path}: line {number}")
            names.append(line.strip())
    return names


def _karpathy_names(path: Path, image_dir: Path) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, entry in enumerate(read_karpathy(path)):
        inside(image_dir, entry.filename, f"{path}: images[{i}].filename")
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
