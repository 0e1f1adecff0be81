"""Exact match and character accuracy for word-level tasks."""

from __future__ import annotations

import pytest

from captioning.metrics.word_accuracy import (
    character_accuracy,
    edit_distance,
    exact_match,
    word_scores,
)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("glove", "glove", 0),
        ("gove", "glove", 1),  # a dropped letter
        ("glave", "glove", 1),  # a wrong letter
        ("gloove", "glove", 1),  # an extra letter
        ("", "glove", 5),
        ("evolg", "glove", 4),
        ("kitten", "sitting", 3),
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_exact_match_and_character_accuracy():
    assert exact_match("glove", " glove ")
    assert not exact_match("Glove", "glove")
    assert character_accuracy("glove", "glove") == 1.0
    assert character_accuracy("gove", "glove") == pytest.approx(0.8)
    assert character_accuracy("xxxxxxxxxx", "glove") == 0.0  # floored, not negative
    assert character_accuracy("", "") == 1.0


def test_word_scores_pool_characters_over_the_corpus():
    predictions = {1: "glove", 2: "gove", 3: "cat"}
    references = {1: ["glove"], 2: ["glove"], 3: ["tiger", "cats"]}
    corpus, per_image = word_scores(predictions, references)
    assert per_image[1] == {"exact_match": 1.0, "char_accuracy": 1.0}
    assert per_image[2] == {"exact_match": 0.0, "char_accuracy": pytest.approx(0.8)}
    # Scored against the closest reference: "cats" (1 edit), not "tiger".
    assert per_image[3] == {"exact_match": 0.0, "char_accuracy": pytest.approx(0.75)}
    assert corpus["exact_match"] == pytest.approx(1 / 3)
    assert corpus["char_accuracy"] == pytest.approx(1 - 2 / 14)


def test_word_scores_refuse_missing_references_and_empty_input():
    with pytest.raises(KeyError, match="image id 2"):
        word_scores({1: "a", 2: "b"}, {1: ["a"]})
    with pytest.raises(ValueError, match="no predictions"):
        word_scores({}, {})
