"""Scores for word-level tasks (reading a CAPTCHA): whole-word exact match, character accuracy.

Character accuracy is 1 - (Levenshtein edits / reference characters), floored at 0: per image
for error analysis, and pooled over the corpus (total edits over total characters) so that long
words weigh more. With several references an image counts against its closest one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def exact_match(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def character_accuracy(prediction: str, reference: str) -> float:
    prediction, reference = prediction.strip(), reference.strip()
    if not reference:
        return float(not prediction)
    return max(0.0, 1.0 - edit_distance(prediction, reference) / len(reference))


# The scores word_scores gives, per image and for the corpus.
SCORE_NAMES = ("exact_match", "char_accuracy")


def word_scores(
    predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]
) -> tuple[dict[str, float], dict[Any, dict[str, float]]]:
    """Corpus and per-image ``exact_match`` and ``char_accuracy``, keyed like ``predictions``."""
    if not predictions:
        raise ValueError("word_scores: no predictions to score")
    missing = [i for i in predictions if not references.get(i)]
    if missing:
        raise KeyError(f"word_scores: no reference for image id {missing[0]!r}")
    per_image: dict[Any, dict[str, float]] = {}
    edits = characters = exact = 0
    for image_id, prediction in predictions.items():
        refs = [r.strip() for r in references[image_id]]
        closest = min(refs, key=lambda r: (edit_distance(prediction.strip(), r), r))
        distance = edit_distance(prediction.strip(), closest)
        hit = any(exact_match(prediction, r) for r in refs)
        exact += hit
        edits += distance
        characters += len(closest)
        per_image[image_id] = {
            "exact_match": float(hit),
            "char_accuracy": character_accuracy(prediction, closest),
        }
    corpus = {
        "exact_match": exact / len(predictions),
        "char_accuracy": max(0.0, 1.0 - edits / max(characters, 1)),
    }
    return corpus, per_image
