"""Reading accuracy of the CAPTCHA reader: whole-word exact match and character accuracy.

Written for this reader alone; a general exact-match / character-accuracy module elsewhere
supersedes it when the two meet (same definitions: exact match counts a word right only if
every letter is; character accuracy is 1 - character error rate).
"""

from __future__ import annotations

from collections.abc import Mapping


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def reading_scores(predictions: Mapping, references: Mapping) -> dict[str, float]:
    """``exact_match``: fraction of images whose predicted word equals the reference;
    ``char_accuracy``: 1 - (sum of edit distances) / (sum of reference lengths), the
    corpus-level character accuracy (a dropped letter costs one, not the rest of the word);
    ``count``: images scored. Every reference needs a prediction."""
    missing = [k for k in references if k not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} references have no prediction, e.g. {missing[0]!r}")
    if not references:
        raise ValueError("no references to score")
    exact = sum(predictions[k] == ref for k, ref in references.items())
    errors = sum(edit_distance(predictions[k], ref) for k, ref in references.items())
    letters = sum(len(ref) for ref in references.values())
    return {
        "exact_match": exact / len(references),
        "char_accuracy": 1.0 - errors / max(letters, 1),
        "count": float(len(references)),
    }
