"""A semantic metric for the ``shapes`` dataset: does a caption name exactly the objects shown?

A caption names an object by a colour word immediately followed by a shape word (the size word,
when present, comes before the colour: ``a small red circle``). An image's caption is correct when
the multiset of (colour, shape) pairs it names equals the image's ground-truth objects: nothing
missing, nothing wrong, nothing extra. Sizes and relations are not scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from captioning.data.sources.shapes import COLOURS, SHAPES

_COLOURS = frozenset(COLOURS)
_SHAPES = frozenset(SHAPES)


def parse_objects(caption: str) -> Counter[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, with multiplicity."""
    words = caption.lower().split()
    found: Counter[tuple[str, str]] = Counter()
    for word, following in zip(words, words[1:], strict=False):
        if word in _COLOURS and following in _SHAPES:
            found[(word, following)] += 1
    return found


def _truth(objects: Sequence[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((str(obj["colour"]), str(obj["shape"])) for obj in objects)


def object_correct(caption: str, objects: Sequence[Mapping[str, Any]]) -> bool:
    """True when the caption names every object (colour and shape) and no other."""
    return parse_objects(caption) == _truth(objects)


def object_accuracy(
    predictions: Mapping[int, str], objects: Mapping[int, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Fraction of predicted captions that name exactly their image's objects.

    Scored over the images in ``predictions``; each must have ground truth in ``objects``.
    Returns ``{"object_accuracy": float, "object_accuracy_by_count": {"1": float, ...},
    "n_images": int}``; the breakdown by number of objects has a key for each count that occurs.
    """
    if not predictions:
        raise ValueError("object_accuracy: no predictions to score")
    missing = [image_id for image_id in predictions if image_id not in objects]
    if missing:
        raise KeyError(
            f"object_accuracy: {len(missing)} predicted image(s) have no ground-truth objects, "
            f"e.g. image id {missing[0]!r}"
        )
    correct = 0
    hits: Counter[int] = Counter()
    totals: Counter[int] = Counter()
    for image_id, caption in predictions.items():
        truth = objects[image_id]
        ok = object_correct(caption, truth)
        correct += ok
        hits[len(truth)] += ok
        totals[len(truth)] += 1
    return {
        "object_accuracy": correct / len(predictions),
        "object_accuracy_by_count": {str(n): hits[n] / totals[n] for n in sorted(totals)},
        "n_images": len(predictions),
    }
