"""COCO 2014 / 2017 captions: the official image and annotation zips, and Karpathy's split.

Captions come from the official ``captions_{train,val}<year>.json``; the split comes from
Karpathy's ``dataset_coco.json`` by COCO image id (``restval`` joins train), which gives the
standard 113,287 / 5,000 / 5,000 images for 2014. The 2017 files hold the same 123,287 images
under other names, so the same split file applies. Images keep their folder:
``images/train2014/COCO_train2014_000000000009.jpg``.

Each official file comes from ``<coco.url>/...`` (through the mirror if one is set), or from
``coco.local_dir`` when that holds the zip or its extracted folder.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from captioning.config import FetchConfig
from captioning.data.download import Expected, acquire
from captioning.data.extract import is_archive
from captioning.data.layout import AnnotationError, expect_key, expect_objects, inside, read_json
from captioning.data.sources.common import (
    LayoutBuilder,
    SourceError,
    expected_for,
    extract_cached,
    find_names,
    read_karpathy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfficialFile:
    path: str  # below coco.url
    size: int
    checksum: str


# Sizes and SHA-256 of the official files as published in tensorflow/datasets
# (tensorflow_datasets/url_checksums/coco.txt); pytorch/vision lists the same SHA-256 values
# (torchvision/prototype/datasets/_builtin/coco.py). Both read through the code search, not
# measured here (no internet on the build machines). `fetch.coco.checksums` overrides any entry.
OFFICIAL_FILES: dict[str, OfficialFile] = {
    "train2014.zip": OfficialFile(
        "zips/train2014.zip",
        13_510_573_713,
        "sha256:ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
    ),
    "val2014.zip": OfficialFile(
        "zips/val2014.zip",
        6_645_013_297,
        "sha256:fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
    ),
    "annotations_trainval2014.zip": OfficialFile(
        "annotations/annotations_trainval2014.zip",
        252_872_794,
        "sha256:031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
    ),
    "train2017.zip": OfficialFile(
        "zips/train2017.zip",
        19_336_861_798,
        "sha256:69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
    ),
    "val2017.zip": OfficialFile(
        "zips/val2017.zip",
        815_585_330,
        "sha256:4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
    ),
    "annotations_trainval2017.zip": OfficialFile(
        "annotations/annotations_trainval2017.zip",
        252_907_541,
        "sha256:113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
    ),
}


@dataclass(frozen=True)
class _CocoImage:
    image_id: int
    file_name: str  # in the layout: <subset>/<official file name>
    source_file: Path
    size: tuple[int, int]
    captions: tuple[str, ...]
    subset: str  # train<year> or val<year>


def fetch_coco(cfg: FetchConfig, out_dir: Path, downloads_dir: Path, year: str) -> dict:
    """Acquire COCO ``year`` and write the internal layout to ``out_dir``."""
    if cfg.coco.split == "karpathy" and not cfg.coco.karpathy:
        raise SourceError(
            f"coco{year}: fetch.coco.karpathy is not set: give the URL or path of "
            "dataset_coco.json (or caption_datasets.zip), or set fetch.coco.split: official"
        )
    files = _CocoFiles(cfg, downloads_dir)
    builder = LayoutBuilder(f"coco{year}")
    images: dict[int, _CocoImage] = {}
    for subset in (f"train{year}", f"val{year}"):
        captions_file = files.captions(year, subset)
        image_dir = files.image_dir(subset)
        for image in _read_captions(captions_file, subset, image_dir, builder.captions_skipped):
            if image.image_id in images:
                raise AnnotationError(
                    f"{captions_file}: image id {image.image_id} also in "
                    f"{images[image.image_id].subset}"
                )
            images[image.image_id] = image
    if cfg.coco.split == "karpathy":
        splits = _karpathy_splits(files.karpathy(), images, year)
    else:
        splits = _official_splits(images, year)
    for split, ids in splits.items():
        for image_id in ids:
            image = images[image_id]
            builder.add(
                image_id, image.file_name, image.source_file, split, image.captions, image.size
            )
    return builder.write(out_dir, {"year": year, "split": cfg.coco.split})


class _CocoFiles:
    """Where each official file comes from: coco.local_dir, or a (mirrored) download."""

    def __init__(self, cfg: FetchConfig, downloads_dir: Path) -> None:
        self.cfg = cfg
        self.coco = cfg.coco
        self.downloads_dir = downloads_dir
        self.local = Path(self.coco.local_dir).expanduser() if self.coco.local_dir else None

    def official(self, name: str) -> Path:
        if self.local is not None and (self.local / name).is_file():
            location = str(self.local / name)
        else:
            location = f"{self.coco.url.rstrip('/')}/{OFFICIAL_FILES[name].path}"
        if name in self.coco.checksums:
            expected = Expected(checksum=self.coco.checksums[name])
        else:
            expected = Expected(OFFICIAL_FILES[name].size, OFFICIAL_FILES[name].checksum)
        return acquire(location, self.downloads_dir, expected=expected, mirror=self.cfg.mirror)

    def image_dir(self, subset: str) -> Path:
        if self.local is not None and (self.local / subset).is_dir():
            return self.local / subset
        root = extract_cached(self.official(f"{subset}.zip"), self.downloads_dir)
        return find_names([root], [subset]).get(subset, root)

    def captions(self, year: str, subset: str) -> Path:
        name = f"captions_{subset}.json"
        if self.local is not None and (self.local / "annotations" / name).is_file():
            return self.local / "annotations" / name
        archive = self.official(f"annotations_trainval{year}.zip")
        # Only the caption files: the instance and keypoint annotations are 90% of the zip.
        root = extract_cached(
            archive,
            self.downloads_dir,
            include=lambda n: PurePosixPath(n).name.startswith("captions_"),
        )
        found = find_names([root], [name])
        if name not in found:
            raise SourceError(f"{archive}: has no {name}")
        return found[name]

    def karpathy(self) -> Path:
        location = self.coco.karpathy
        path = acquire(
            location,
            self.downloads_dir,
            expected=expected_for(location, self.coco.checksums),
            mirror=self.cfg.mirror,
        )
        if is_archive(path) or path.is_dir():
            root = extract_cached(path, self.downloads_dir) if is_archive(path) else path
            found = find_names([root], ["dataset_coco.json"])
            if "dataset_coco.json" not in found:
                raise SourceError(f"{location}: has no dataset_coco.json")
            path = found["dataset_coco.json"]
        return path


def _read_captions(
    path: Path, subset: str, image_dir: Path, captions_skipped: Counter[str]
) -> list[_CocoImage]:
    """The images of an official caption file with their captions; captions whose image id is
    not among the images are counted as "dangling" in ``captions_skipped`` and left out."""
    data = read_json(path)
    captions: dict[int, list[str]] = {}
    for where, ann in expect_objects(data, "annotations", path):
        image_id = expect_key(ann, "image_id", int, path, where)
        captions.setdefault(image_id, []).append(expect_key(ann, "caption", str, path, where))
    out = []
    for where, image in expect_objects(data, "images", path):
        image_id = expect_key(image, "id", int, path, where)
        name = expect_key(image, "file_name", str, path, where)
        source_file = inside(image_dir, name, f"{path}: {where}.file_name")
        size = (
            expect_key(image, "width", int, path, where),
            expect_key(image, "height", int, path, where),
        )
        out.append(
            _CocoImage(
                image_id,
                f"{subset}/{name}",
                source_file,
                size,
                tuple(captions.pop(image_id, ())),
                subset,
            )
        )
    if captions:
        dangling = sum(len(texts) for texts in captions.values())
        captions_skipped["dangling"] += dangling
        logger.warning(
            "%s: %d captions name image ids not in 'images' (e.g. %d); skipped",
            path,
            dangling,
            min(captions),
        )
    return out


def _karpathy_splits(path: Path, images: dict[int, _CocoImage], year: str) -> dict[str, list[int]]:
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, entry in enumerate(read_karpathy(path)):
        if entry.cocoid is None:
            raise AnnotationError(f"{path}: images[{i}]: missing key 'cocoid'")
        if entry.cocoid not in images:
            raise AnnotationError(
                f"{path}: images[{i}]: cocoid {entry.cocoid} ({entry.filename}) is not in the "
                f"COCO {year} caption annotations"
            )
        splits[entry.split].append(entry.cocoid)
    for ids in splits.values():
        ids.sort()
    unused = len(images) - sum(len(ids) for ids in splits.values())
    logger.info(
        "Karpathy split: %s images%s",
        " / ".join(f"{len(ids):,}" for ids in splits.values()),
        f" ({unused} images of COCO {year} are in no split)" if unused else "",
    )
    return splits


def _official_splits(images: dict[int, _CocoImage], year: str) -> dict[str, list[int]]:
    """train<year> for training; val<year> halved by image id into val and test."""
    train = sorted(i for i, image in images.items() if image.subset == f"train{year}")
    held_out = sorted(i for i, image in images.items() if image.subset == f"val{year}")
    half = len(held_out) // 2
    return {"train": train, "val": held_out[:half], "test": held_out[half:]}
