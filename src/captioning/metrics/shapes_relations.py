"""Relation metrics for the ``shapes`` dataset: does a caption say where things are, and truly?

A caption states a relation as ``P <relation> Q`` with P and Q noun phrases ``[size] colour
shape`` and the relation one of the dataset's (``to the left of``, ``to the right of``,
``above``, ``below``): "a red square to the left of a large blue circle". P is the phrase just
before the relation words, Q the one just after, as the dataset's templates write them.

A stated relation **holds** when both phrases resolve to objects of the scene (by colour and
shape, which are unique within a scene; a stated size must match too) and the relation is the
one the dataset itself would state of that pair (``shapes.relation``: the centres mostly along
that axis and a clear gap between the boxes). A relation that names a missing object, or a
pair whose relation is ill-defined or the other way round, does not hold.

- ``relation_precision``: stated relations that hold / stated relations (0 when none is stated);
- ``relation_coverage``: images with two or more objects whose caption states a relation /
  images with two or more objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from captioning.data.sources.shapes import COLOURS, RELATIONS, SHAPES, SIZES, relation

_COLOURS, _SHAPES, _SIZES = frozenset(COLOURS), frozenset(SHAPES), frozenset(SIZES)
# The relation phrases as word tuples, longest first ("to the left of" before any prefix).
_RELATION_WORDS = sorted(
    ((tuple(words.split()), name) for name, words in RELATIONS.items()),
    key=lambda item: -len(item[0]),
)
RELATION_SCORE_NAMES = ("relation_precision", "relation_coverage")


@dataclass(frozen=True)
class Phrase:
    colour: str
    shape: str
    size: str | None = None  # None: not stated


@dataclass(frozen=True)
class StatedRelation:
    subject: Phrase
    relation: str  # a key of shapes.RELATIONS: left, right, above, below
    object: Phrase


@dataclass(frozen=True)
class Scene:
    """What a relation is judged against: the scene's objects (``shape``, ``colour``, ``size``,
    ``x``, ``y``, ``box``, as the dataset writes them) and the image's side in pixels."""

    objects: Sequence[Mapping[str, Any]]
    size: int

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> Scene:
        """A shapes image's metadata (its ``objects`` and ``width``)."""
        return cls(meta["objects"], int(meta["width"]))


def parse_relations(caption: str) -> list[StatedRelation]:
    """The relations a caption states, in order."""
    words = caption.lower().split()
    stated = []
    i = 0
    while i < len(words):
        match = next(
            ((n, name) for n, name in _RELATION_WORDS if tuple(words[i : i + len(n)]) == n),
            None,
        )
        if match is None:
            i += 1
            continue
        span, name = match
        subject = _phrase_ending_at(words, i)
        obj = _phrase_starting_at(words, i + len(span))
        if subject is not None and obj is not None:
            stated.append(StatedRelation(subject, name, obj))
        i += len(span)
    return stated


def _phrase_ending_at(words: Sequence[str], end: int) -> Phrase | None:
    """The ``[size] colour shape`` phrase whose shape word is just before ``words[end]``."""
    if end < 2 or words[end - 1] not in _SHAPES or words[end - 2] not in _COLOURS:
        return None
    size = words[end - 3] if end >= 3 and words[end - 3] in _SIZES else None
    return Phrase(words[end - 2], words[end - 1], size)


def _phrase_starting_at(words: Sequence[str], start: int) -> Phrase | None:
    """The ``[a|an] [size] colour shape`` phrase that begins at ``words[start]``."""
    i = start + (start < len(words) and words[start] in ("a", "an", "the"))
    size = None
    if i < len(words) and words[i] in _SIZES:
        size, i = words[i], i + 1
    if i + 1 < len(words) and words[i] in _COLOURS and words[i + 1] in _SHAPES:
        return Phrase(words[i], words[i + 1], size)
    return None


def _resolve(phrase: Phrase, scene: Scene) -> Mapping[str, Any] | None:
    for obj in scene.objects:
        if obj["colour"] == phrase.colour and obj["shape"] == phrase.shape:
            return obj if phrase.size in (None, obj.get("size")) else None
    return None


def holds(stated: StatedRelation, scene: Scene) -> bool:
    """Whether the relation is true of the scene (see the module's docstring)."""
    subject, obj = _resolve(stated.subject, scene), _resolve(stated.object, scene)
    if subject is None or obj is None or subject is obj:
        return False
    return relation(subject, obj, scene.size) == stated.relation


def image_relations(caption: str, scene: Scene) -> tuple[int, int]:
    """(relations stated, of which hold) in one caption."""
    stated = parse_relations(caption)
    return len(stated), sum(holds(s, scene) for s in stated)


def relation_scores(
    predictions: Mapping[Any, str], scenes: Mapping[Any, Scene]
) -> dict[str, float]:
    """``relation_precision`` and ``relation_coverage`` of the captions in ``predictions``
    (image -> caption), each image judged against its scene, with the counts behind them."""
    stated = true = multi = covered = 0
    for image_id, caption in predictions.items():
        scene = scenes[image_id]
        n_stated, n_true = image_relations(caption, scene)
        stated, true = stated + n_stated, true + n_true
        if len(scene.objects) >= 2:
            multi += 1
            covered += n_stated > 0
    return {
        "relation_precision": true / stated if stated else 0.0,
        "relation_coverage": covered / multi if multi else 0.0,
        "relations_stated": float(stated),
        "multi_object_images": float(multi),
    }
