"""The one internal dataset layout every source is normalised to.

``<root>/images/<file_name>``, ``<root>/captions.json`` (COCO captions format) and
``<root>/splits.json`` (Karpathy style: split name -> list of image ids). A malformed file fails
here, with the file, the place and what was expected, so later stages never see it.

The rules for what a data file may hold live here too, used by the sources (fetch) and by
``load_dataset`` (shard) alike: text files are UTF-8 (``read_utf8``), a path read from a file
names a file inside its root (``inside``), and a caption that is blank, longer than
``MAX_CAPTION_CHARS`` or names no image is skipped and counted (``keep_captions``).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.errors import CaptioningError

SPLITS = ("train", "val", "test")
# Test sets a source may add (the CAPTCHA reader's other-seed and out-of-vocabulary words):
# accepted in splits.json and sharded like test, never written by the other sources.
EXTRA_SPLITS = ("test_seed", "test_oov")

# A longer caption is skipped: COCO's longest is a few hundred characters, Flickr's shorter; a
# caption of thousands is a broken file (a whole document in one field), not a description,
# and would go into every shard, vocabulary count and batch whole.
MAX_CAPTION_CHARS = 1000
# Why a caption is skipped, as counted in the fetch summary and the shard manifest.
CAPTION_SKIP_KINDS = ("blank", "dangling", "too long")


class AnnotationError(CaptioningError, ValueError):
    """A captions or splits file that does not have the expected structure."""


class UnsafePathError(AnnotationError):
    """A path read from a data file that would leave the folder it names a file in."""


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    split: str
    captions: tuple[str, ...]
    # Anything else the source stored for the image (e.g. shapes' ground-truth objects).
    extra: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    root: str | Path, captions_skipped: Counter[str] | None = None
) -> dict[str, list[ImageRecord]]:
    """Read captions.json + splits.json into records per split, ordered as in splits.json.

    Captions that are blank, too long or name no image are left out and counted by kind in
    ``captions_skipped``; a file name that leads outside ``<root>/images`` is refused.
    """
    root = Path(root)
    skipped: Counter[str] = Counter() if captions_skipped is None else captions_skipped
    captions_path = root / "captions.json"
    splits_path = root / "splits.json"
    coco = read_json(captions_path)
    splits = read_json(splits_path)

    by_id: dict[int, dict[str, Any]] = {}
    for where, image in expect_objects(coco, "images", captions_path):
        image_id = expect_key(image, "id", int, captions_path, where)
        file_name = expect_key(image, "file_name", str, captions_path, where)
        inside(root / "images", file_name, f"{captions_path}: {where}.file_name")
        if image_id in by_id:
            raise AnnotationError(f"{captions_path}: {where}: duplicate image id {image_id}")
        by_id[image_id] = image

    captions: dict[int, list[str]] = defaultdict(list)
    for where, ann in expect_objects(coco, "annotations", captions_path):
        image_id = expect_key(ann, "image_id", int, captions_path, where)
        caption = expect_key(ann, "caption", str, captions_path, where)
        if image_id not in by_id:
            skipped["dangling"] += 1
            continue
        captions[image_id].extend(keep_captions([caption], skipped))

    if not isinstance(splits, dict):
        raise AnnotationError(f"{splits_path}: expected an object of split -> [image ids]")
    out: dict[str, list[ImageRecord]] = {}
    for split, ids in splits.items():
        if split not in SPLITS + EXTRA_SPLITS:
            raise AnnotationError(
                f"{splits_path}: unknown split {split!r}; expected {SPLITS + EXTRA_SPLITS}"
            )
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


def read_utf8(path: Path) -> str:
    """The text of a data file; a missing one, or one that is not UTF-8, fails with the file
    and the place (line and byte offset of the first bad byte)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        # Decoded as a whole, not through a text stream: no newline translation, so a CSV
        # reader sees the file as written.
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(
            f"{path}: line {line}, byte offset {exc.start}: byte 0x{data[exc.start]:02x} is not "
            "valid UTF-8; expected UTF-8 text (re-save the file as UTF-8)"
        ) from None


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or invalid one fails with the file and the place."""
    text = read_utf8(path)
    try:
        return json.loads(text)
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


def keep_captions(captions: Iterable[str], skipped: Counter[str]) -> list[str]:
    """The captions, stripped, without the blank and the over-long (``MAX_CAPTION_CHARS``)
    ones, which are counted in ``skipped`` by kind ("dangling" is counted by the callers, who
    know the images)."""
    kept = []
    for caption in captions:
        caption = caption.strip()
        if not caption:
            skipped["blank"] += 1
        elif len(caption) > MAX_CAPTION_CHARS:
            skipped["too long"] += 1
        else:
            kept.append(caption)
    return kept


def skip_counts(skipped: Counter[str]) -> dict[str, int]:
    """Every kind of ``CAPTION_SKIP_KINDS`` with its count, or ``{}`` when nothing was skipped
    (so the outputs of clean input stay as they were)."""
    if not any(skipped[kind] for kind in CAPTION_SKIP_KINDS):
        return {}
    return {kind: skipped[kind] for kind in CAPTION_SKIP_KINDS}


def describe_skips(counts: dict[str, int]) -> str:
    """``skip_counts`` for a log line: ``1 blank, 0 dangling, 2 too long (over 1000 characters)``."""
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return f"{text} (too long: over {MAX_CAPTION_CHARS} characters)"


def name_problem(name: str) -> str | None:
    """Why the relative path ``name`` (``/`` or ``\\`` separated) could name something outside
    the folder it is joined to, or None. Archive entries (``data.extract``) and file names read
    from data files are checked by this one rule."""
    # A backslash counts as a separator (archives made on Windows), so '..\\x' climbs out too.
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ":" in parts[0]:
        return "has an absolute path"
    if ".." in parts:
        return "escapes the target directory (..)"
    if "\0" in name:
        return "has a NUL byte in its name"
    return None


def inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a ``name`` read from a data file, refused (``UnsafePathError``, which
    says ``where``: the file and the entry) unless it names a file inside ``root``: not
    absolute, no ``..``, and no symbolic link on the way that leads out of ``root``."""
    # The parts as the file system splits them (a backslash is part of a name here).
    parts = [part for part in name.split("/") if part not in ("", ".")]
    problem = name_problem(name) or (None if parts else "is empty")
    if problem:
        raise UnsafePathError(f"{where}: {name!r} {problem}; it must name a file inside {root}")
    # Without '..', only a symbolic link below root can lead out: one lstat per part of the
    # name. (os.path, not pathlib, and no resolve unless there is a link: this runs per image.)
    below = str(root)
    for part in parts:
        below = os.path.join(below, part)
        if os.path.islink(below):
            _check_resolves_inside(root, name, where)
            break
    # The path as joined, not as resolved: messages and manifests name it as the data file does.
    return root / name


def _check_resolves_inside(root: Path, name: str, where: str) -> None:
    path = root / name
    try:
        resolved, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        raise UnsafePathError(
            f"{where}: {name!r} cannot be resolved inside {root} ({exc})"
        ) from None
    if not resolved.is_relative_to(real_root):
        raise UnsafePathError(
            f"{where}: {name!r} resolves outside {root} (to {resolved}, through a symbolic link); "
            "refused"
        )
