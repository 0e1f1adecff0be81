"""Per-image test scores (``reports/<decoder>/per_image.json``) as the promotion gate reads them.

The file is a list of ``{"image_id", "references": [...], "<decoding>": {"caption", "<metric>":
score, ...}, ...}``. Two models are comparable only on the same images with the same references:
CIDEr-D's document frequencies come from the references, so another reference set changes every
image's score. ``reference_digest`` fingerprints exactly that.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captioning.errors import BadInputError, CaptioningError
from captioning.io import read_json_input


class NotComparable(CaptioningError, ValueError):
    """Two score sets that cannot be compared image by image."""


class DifferentTestSets(NotComparable):
    """Scores measured on other images, or on the same images with other references."""


@dataclass(frozen=True)
class ImageScores:
    """One model's score per test image, and the test set they were measured on."""

    scores: dict[str, float]  # image id (as text) -> score
    test_set: str  # reference_digest of the images and their references
    source: str  # where they came from, for messages

    def __len__(self) -> int:
        return len(self.scores)


def read_per_image(path: Path, decoding: str, metric: str) -> ImageScores:
    """``entry[decoding][metric]`` of every image in ``path``, with the file and entry in errors."""
    path = Path(path)
    entries = read_json_input(path, "not found (per-image scores of the evaluate stage)")
    return parse_per_image(entries, decoding, metric, source=str(path))


def parse_per_image(entries: Any, decoding: str, metric: str, *, source: str) -> ImageScores:
    if not isinstance(entries, list) or not entries:
        raise BadInputError(f"{source}: expected a non-empty list of per-image entries")
    scores: dict[str, float] = {}
    references: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        where = f"{source}: entry [{i}]"
        if not isinstance(entry, dict) or "image_id" not in entry:
            raise BadInputError(f"{where}: expected an object with 'image_id'")
        image_id = str(entry["image_id"])
        if image_id in scores:
            raise BadInputError(f"{where}: image_id {image_id} appears twice")
        decoded = entry.get(decoding)
        if not isinstance(decoded, dict):
            found = sorted(k for k in entry if k not in ("image_id", "references"))
            raise BadInputError(f"{where}: no decoding {decoding!r}; found {found}")
        value = decoded.get(metric)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise BadInputError(
                f"{where}.{decoding}: expected a number under {metric!r}, found {value!r} "
                f"(scores there: {sorted(decoded)})"
            )
        scores[image_id] = float(value)
        refs = entry.get("references", [])
        references[image_id] = [str(r) for r in refs] if isinstance(refs, list) else [str(refs)]
    return ImageScores(scores, reference_digest(references), source)


def reference_digest(references: dict[str, list[str]]) -> str:
    """A 16-hex sha256 of the sorted image ids and their references."""
    canonical = json.dumps(sorted(references.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def paired_arrays(challenger: ImageScores, champion: ImageScores) -> tuple[np.ndarray, np.ndarray]:
    """The two models' scores on the same images, in one order; refuses different test sets."""
    a_ids, b_ids = set(challenger.scores), set(champion.scores)
    if a_ids != b_ids:
        common = len(a_ids & b_ids)
        raise DifferentTestSets(
            f"different test sets: {challenger.source} was scored on {len(a_ids)} test images, "
            f"{champion.source} on {len(b_ids)}, {common} in common"
        )
    if challenger.test_set != champion.test_set:
        raise DifferentTestSets(
            f"different test sets: the same {len(a_ids)} test images with different references "
            f"({challenger.source} test set {challenger.test_set}, {champion.source} "
            f"{champion.test_set})"
        )
    ids = sorted(a_ids)
    a = np.array([challenger.scores[i] for i in ids], dtype=np.float64)
    b = np.array([champion.scores[i] for i in ids], dtype=np.float64)
    return a, b
