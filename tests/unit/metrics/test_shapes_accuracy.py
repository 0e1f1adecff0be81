"""The shapes semantic metric: exact multiset match of (colour, shape) pairs."""

from __future__ import annotations

from collections import Counter

import pytest

from captioning.metrics.shapes_accuracy import object_accuracy, object_correct, parse_objects


def _obj(colour: str, shape: str, size: str = "small") -> dict:
    return {"colour": colour, "shape": shape, "size": size, "x": 0, "y": 0}


ONE = [_obj("red", "circle")]
TWO = [_obj("red", "circle"), _obj("blue", "square", "large")]
THREE = [_obj("red", "circle"), _obj("blue", "square"), _obj("white", "star")]


def test_parse_objects() -> None:
    assert parse_objects("a small red circle to the left of a large blue square") == Counter(
        {("red", "circle"): 1, ("blue", "square"): 1}
    )
    assert parse_objects("there is a white star and a white star") == Counter(
        {("white", "star"): 2}
    )
    # A colour not followed by a shape, a shape without a colour, a size word between: not named.
    assert parse_objects("a red and a blue circle") == Counter({("blue", "circle"): 1})
    assert parse_objects("a circle") == Counter()
    assert parse_objects("a red small circle") == Counter()
    assert parse_objects("") == Counter()


@pytest.mark.parametrize(
    ("caption", "objects"),
    [
        ("a small red circle", ONE),
        ("there is a red circle in the image", ONE),
        ("a large blue square to the right of a red circle", TWO),
        ("a red circle and a blue square", TWO),
        ("a red circle above a blue square and a white star", THREE),
        ("the image shows a white star a blue square and a red circle", THREE),
    ],
)
def test_correct_captions(caption: str, objects: list[dict]) -> None:
    assert object_correct(caption, objects)


@pytest.mark.parametrize(
    ("caption", "objects", "why"),
    [
        ("a small yellow circle", ONE, "wrong colour"),
        ("a small red square", ONE, "wrong shape"),
        ("a red circle", TWO, "missing object"),
        ("a red circle and a blue square and a yellow star", TWO, "extra object"),
        ("a red circle and a red circle", ONE, "object named twice"),
        ("a red circle above a blue square and a white circle", THREE, "colour on wrong shape"),
        ("a red circle and a blue square", THREE, "missing third"),
        ("", ONE, "empty caption"),
    ],
)
def test_wrong_captions(caption: str, objects: list[dict], why: str) -> None:
    assert not object_correct(caption, objects), why


def test_object_accuracy_and_breakdown() -> None:
    objects = {1: ONE, 2: ONE, 3: TWO, 4: TWO, 5: THREE, 6: TWO}
    predictions = {
        1: "a red circle",  # right
        2: "a yellow circle",  # wrong colour
        3: "a blue square to the right of a red circle",  # right
        4: "a red circle",  # missing object
        5: "a red circle a blue square and a white star",  # right
        6: "a red circle and a blue square",  # right
    }
    result = object_accuracy(predictions, objects)
    assert result["n_images"] == 6
    assert result["object_accuracy"] == pytest.approx(4 / 6)
    assert result["object_accuracy_by_count"] == pytest.approx({"1": 0.5, "2": 2 / 3, "3": 1.0})


def test_object_accuracy_scores_only_predicted_images() -> None:
    result = object_accuracy({1: "a red circle"}, {1: ONE, 2: TWO})
    assert result == {
        "object_accuracy": 1.0,
        "object_accuracy_by_count": {"1": 1.0},
        "n_images": 1,
    }


def test_object_accuracy_rejects_unknown_images_and_empty_input() -> None:
    with pytest.raises(KeyError, match="image id 7"):
        object_accuracy({7: "a red circle"}, {1: ONE})
    with pytest.raises(ValueError, match="no predictions"):
        object_accuracy({}, {1: ONE})
