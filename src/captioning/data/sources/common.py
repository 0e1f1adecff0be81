"""What the real-dataset sources share: getting their files, finding things in them, Karpathy
split files, and writing the internal layout (images/ + captions.json + splits.json)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from captioning.data.download import Expected, acquire
from captioning.data.extract import archive_stem, is_archive, safe_extract
from captioning.data.layout import (
    SPLITS,
    AnnotationError,
    describe_skips,
    expect_key,
    expect_objects,
    inside,
    keep_captions,
    read_json,
    skip_counts,
)
from captioning.errors import CaptioningError
from captioning.io import atomic_path, link_or_copy, write_json

logger = logging.getLogger(__name__)


class SourceError(CaptioningError, ValueError):
    """A source whose params or files do not give a dataset (what is missing, what to set)."""


def expected_for(location: str, checksums: dict[str, str]) -> Expected:
    """The checksum configured for a file, looked up by its file name."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    return Expected(checksum=checksums.get(name))


def gather(
    locations: Iterable[str],
    downloads_dir: Path,
    *,
    mirror: str,
    checksums: dict[str, str],
) -> list[Path]:
    """Each location (URL or local path) as a local root: archives are extracted, directories
    and other files are used as they are."""
    roots = []
    for location in locations:
        path = acquire(
            location, downloads_dir, expected=expected_for(location, checksums), mirror=mirror
        )
        roots.append(extract_cached(path, downloads_dir) if is_archive(path) else path)
    return roots


def extract_cached(archive: Path, downloads_dir: Path, **options: Any) -> Path:
    """Extract ``archive`` under ``downloads_dir/extracted/`` (kept for re-runs)."""
    # Two archives may share a name (Kaggle calls everything archive.zip): add a hash of the path.
    tag = hashlib.sha1(str(archive.resolve()).encode()).hexdigest()[:8]
    return safe_extract(
        archive, downloads_dir / "extracted" / f"{archive_stem(archive)}-{tag}", **options
    )


def find_names(roots: Iterable[Path], names: Iterable[str]) -> dict[str, Path]:
    """The first file or directory with each of ``names`` under the roots (sorted walk, so
    shallower and alphabetically first wins); names not found are absent from the result."""
    wanted = set(names)
    found: dict[str, Path] = {}
    for root in roots:
        if root.name in wanted and root.name not in found:
            found[root.name] = root
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                if name in wanted and name not in found:
                    found[name] = Path(dirpath) / name
            if len(found) == len(wanted):
                return found
    return found


@dataclass(frozen=True)
class KarpathyImage:
    """One image of a Karpathy split file (dataset_coco.json, dataset_flickr8k/30k.json)."""

    filename: str
    split: str  # train, val or test ("restval" is train)
    sentences: tuple[str, ...]
    cocoid: int | None = None
    filepath: str = ""


KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path: Path) -> list[KarpathyImage]:
    """Parse and check a Karpathy split file; a malformed one fails with the file and place."""
    out = []
    for where, image in expect_objects(read_json(path), "images", path):
        split = expect_key(image, "split", str, path, where)
        if split not in KARPATHY_SPLITS:
            raise AnnotationError(
                f"{path}: {where}.split: expected one of {sorted(KARPATHY_SPLITS)}, found {split!r}"
            )
        sentences = []
        for j, sentence in enumerate(expect_key(image, "sentences", list, path, where)):
            if not isinstance(sentence, dict):
                raise AnnotationError(f"{path}: {where}.sentences[{j}]: expected an object")
            sentences.append(expect_key(sentence, "raw", str, path, f"{where}.sentences[{j}]"))
        out.append(
            KarpathyImage(
                filename=expect_key(image, "filename", str, path, where),
                split=KARPATHY_SPLITS[split],
                sentences=tuple(s.strip() for s in sentences),
                cocoid=expect_key(image, "cocoid", int, path, where) if "cocoid" in image else None,
                filepath=expect_key(image, "filepath", str, path, where)
                if "filepath" in image
                else "",
            )
        )
    return out


def photo_ids(names: Iterable[str]) -> dict[str, int]:
    """Integer image ids for Flickr file names: the Flickr photo id that starts each name
    (``1000268201_693b08cb0e.jpg`` -> 1000268201), or, if those are missing or not unique,
    1, 2, ... in sorted name order. Either way the ids depend on the names alone."""
    names = sorted(set(names))
    ids = {}
    for name in names:
        digits = name.split("_", 1)[0].split(".", 1)[0]
        if not digits.isdigit():
            break
        ids[name] = int(digits)
    if len(ids) == len(names) and len(set(ids.values())) == len(ids):
        return ids
    logger.info("file names do not start with unique photo ids: numbering images 1..%d", len(names))
    return {name: i for i, name in enumerate(names, start=1)}


@dataclass
class LayoutBuilder:
    """Collects images, captions and splits, then writes the internal layout in one piece.

    Blank and over-long captions are left out here and counted by kind in
    ``captions_skipped``, where a source also counts the captions that name no image.
    """

    source: str
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    files: dict[str, Path] = field(default_factory=dict)
    captions_skipped: Counter[str] = field(default_factory=Counter)

    def add(
        self,
        image_id: int,
        file_name: str,
        source_file: Path,
        split: str,
        captions: Iterable[str],
        size: tuple[int, int] | None = None,
    ) -> None:
        if file_name in self.files:
            raise SourceError(f"{self.source}: image {file_name!r} is listed twice")
        image: dict[str, Any] = {"id": image_id, "file_name": file_name}
        size = size or _header_size(source_file)
        if size is not None:
            image["width"], image["height"] = size
        self.images.append(image)
        for caption in keep_captions(captions, self.captions_skipped):
            self.annotations.append(
                {"id": len(self.annotations) + 1, "image_id": image_id, "caption": caption}
            )
        self.splits[split].append(image_id)
        self.files[file_name] = source_file

    def write(self, out_dir: Path, info: dict[str, Any]) -> dict[str, int]:
        """Write ``out_dir`` (replaced atomically): images are hard links where possible."""
        missing = 0
        with atomic_path(out_dir) as tmp:
            for file_name, source in tqdm(
                self.files.items(), desc=f"{self.source} images", unit="img"
            ):
                if not source.is_file():
                    missing += 1  # listed anyway: the shard stage reports it as missing
                    continue
                # Sources check their names where they read them; this guards the output.
                target = inside(tmp / "images", file_name, f"{self.source}: image")
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(source, target)
            (tmp / "images").mkdir(parents=True, exist_ok=True)
            captions = {
                "info": {"source": self.source, **info},
                "images": self.images,
                "annotations": self.annotations,
            }
            write_json(tmp / "captions.json", captions)
            write_json(tmp / "splits.json", self.splits)
        if missing:
            logger.warning("%s: %d listed images were not found in the files", self.source, missing)
        summary = {split: len(ids) for split, ids in self.splits.items()}
        summary.update(images=len(self.images), annotations=len(self.annotations))
        skipped = skip_counts(self.captions_skipped)
        if skipped:
            summary["captions_skipped"] = skipped
            logger.warning("%s: captions skipped: %s", self.source, describe_skips(skipped))
        logger.info("%s: %s", self.source, summary)
        return summary


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # the shard stage decodes it fully and says what is wrong
