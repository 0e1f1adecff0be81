import pytest

from captioning.metrics.reading import edit_distance, reading_scores


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("glove", "glove", 0), ("gove", "glove", 1), ("glvoe", "glove", 2)]
    + [("", "abc", 3), ("cat", "dog", 3), ("kitten", "sitting", 3)],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_exact_match_counts_whole_words_and_char_accuracy_is_one_minus_cer():
    references = {1: "glove", 2: "cat", 3: "house", 4: "dog"}
    predictions = {1: "gove", 2: "cat", 3: "house", 4: "dig"}
    scores = reading_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(2 / 4)
    # one deletion + one substitution over 5 + 3 + 5 + 3 = 16 letters
    assert scores["char_accuracy"] == pytest.approx(1 - 2 / 16)
    assert scores["count"] == 4


def test_every_reference_needs_a_prediction():
    with pytest.raises(KeyError, match="1 references have no prediction"):
        reading_scores({1: "a"}, {1: "a", 2: "b"})
    with pytest.raises(ValueError, match="no references"):
        reading_scores({}, {})
