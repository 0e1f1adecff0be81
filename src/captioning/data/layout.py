"""The one internal dataset layout every source is normalised to.

``<root>/images/<file_name>``, ``<root>/captions.json`` (COCO captions format) and
``<root>/splits.json`` (Karpathy style: split name -> list of image ids). A malformed file fails
here, with the file, the place and what was expected, so later stages never see it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import CaptioningError

SPLITS = ("train", "val", "test")


class AnnotationError(CaptioningError, ValueError):
    """A captions or splits file that does not have the expected structure."""


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    split: str
    captions: tuple[str, ...]
    # Anything else the source stored for the image (e.g. shapes' ground-truth objects).
    extra: dict[str, Any] = field(default_factory=dict)


def load_dataset(root: str | Path) -> dict[str, list[ImageRecord]]:
    """Read captions.json + splits.json into records per split, ordered as in splits.json."""
    root = Path(root)
    captions_path = root / "captions.json"
    splits_path = root / "splits.json"
    coco = read_json(captions_path)
    splits = read_json(splits_path)

    images = expect_key(coco, "images", list, captions_path, "<top level>")
    annotations = expect_key(coco, "annotations", list, captions_path, "<top level>")
    by_id: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            raise AnnotationError(f"{captions_path}: {where}: expected an object, found {image!r}")
        image_id = expect_key(image, "id", int, captions_path, where)
        expect_key(image, "file_name", str, captions_path, where)
        if image_id in by_id:
            raise AnnotationError(f"{captions_path}: {where}: duplicate image id {image_id}")
        by_id[image_id] = image

    captions: dict[int, list[str]] = defaultdict(list)
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{captions_path}: {where}: expected an object, found {ann!r}")
        image_id = expect_key(ann, "image_id", int, captions_path, where)
        caption = expect_key(ann, "caption", str, captions_path, where)
        if image_id not in by_id:
            raise AnnotationError(
                f"{captions_path}: {where}: image_id {image_id} is not in 'images'"
            )
        captions[image_id].append(caption.strip())

    if not isinstance(splits, dict):
        raise AnnotationError(f"{splits_path}: expected an object of split -> [image ids]")
    out: dict[str, list[ImageRecord]] = {}
    for split, ids in splits.items():
        if split not in SPLITS:
            raise AnnotationError(f"{splits_path}: unknown split {split!r}; expected {SPLITS}")
        if not isinstance(ids, list):
            raise AnnotationError(f"{splits_path}: {split}: expected a list of image ids")
        records = []
        for j, image_id in enumerate(ids):
            if image_id not in by_id:
                raise AnnotationError(
                    f"{splits_path}: {split}[{j}]: image id {image_id!r} is not in {captions_path.name}"
                )
            image = by_id[image_id]
            extra = {k: v for k, v in image.items() if k not in ("id", "file_name")}
            records.append(
                ImageRecord(
                    image_id=image_id,
                    file_name=image["file_name"],
                    split=split,
                    captions=tuple(captions.get(image_id, ())),
                    extra=extra,
                )
            )
        out[split] = records
    return out


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing or invalid one fails with the file and the line."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
        ) from exc


def expect_objects(data: Any, key: str, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(place, object)`` for each object in the list ``data[key]``, checked on the way."""
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{path}: expected an object with {key!r}, found {type(data).__name__}"
        )
    for i, item in enumerate(expect_key(data, key, list, path, "<top level>")):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise AnnotationError(f"{path}: {where}: expected an object, found {item!r}")
        yield where, item


def expect_key(obj: dict[str, Any], key: str, kind: type, path: Path, where: str) -> Any:
    """``obj[key]``, which must be a ``kind``; else fail naming the file and the place."""
    if key not in obj:
        raise AnnotationError(f"{path}: {where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AnnotationError(
            f"{path}: {where}.{key}: expected {kind.__name__}, found {type(value).__name__} {value!r}"
        )
    return value
