import numpy as np
import pytest

from captioning.data.sources.shapes import INVERSE, RELATIONS, make_captions, relation, render_scene
from captioning.metrics.shapes_relations import (
    Phrase,
    Scene,
    StatedRelation,
    holds,
    parse_relations,
    relation_scores,
)

SIZE = 224


def obj(colour, shape, size, x0, y0, side=50):
    box = [x0, y0, x0 + side, y0 + side]
    return {
        "colour": colour,
        "shape": shape,
        "size": size,
        "x": x0 + side // 2,
        "y": y0 + side // 2,
        "box": box,
    }


# A red square well to the left of a blue circle; a yellow star below-right of both, diagonal
# to the circle (no well-defined relation between them).
RED = obj("red", "square", "small", 10, 80)
BLUE = obj("blue", "circle", "large", 120, 80)
STAR = obj("yellow", "star", "small", 170, 170)
SCENE = Scene([RED, BLUE, STAR], SIZE)


def test_parses_subject_relation_and_object_with_sizes_and_articles():
    stated = parse_relations(
        "there is a yellow star and a small red square to the left of a large blue circle"
    )
    assert stated == [
        StatedRelation(Phrase("red", "square", "small"), "left", Phrase("blue", "circle", "large"))
    ]
    assert parse_relations("a red square above an blue circle below a yellow star") == [
        StatedRelation(Phrase("red", "square"), "above", Phrase("blue", "circle")),
        StatedRelation(Phrase("blue", "circle"), "below", Phrase("yellow", "star")),
    ]
    assert parse_relations("a red square a blue circle and a yellow star") == []
    assert parse_relations("to the left of a blue circle") == []  # no subject: not a statement


@pytest.mark.parametrize(
    ("caption", "true"),
    [
        ("a red square to the left of a blue circle", True),
        ("a blue circle to the right of a small red square", True),
        ("a red square to the right of a blue circle", False),  # the other way round
        ("a large red square to the left of a blue circle", False),  # the red square is small
        ("a red circle to the left of a blue circle", False),  # no red circle in the scene
        ("a blue circle above a yellow star", False),  # diagonal: not well defined
        ("a red square to the left of a red square", False),  # one object with itself
    ],
)
def test_a_relation_holds_only_for_the_scenes_objects_the_right_way_round(caption, true):
    (stated,) = parse_relations(caption)
    assert holds(stated, SCENE) is true


def test_precision_and_coverage_over_images():
    scenes = {1: SCENE, 2: Scene([RED, BLUE], SIZE), 3: Scene([STAR], SIZE)}
    predictions = {
        1: "a red square to the left of a blue circle and a yellow star",  # true
        2: "a blue circle to the left of a red square",  # false
        3: "a yellow star",  # one object: not counted in coverage
    }
    scores = relation_scores(predictions, scenes)
    assert scores["relation_precision"] == 0.5
    assert scores["relation_coverage"] == 1.0
    assert scores["multi_object_images"] == 2
    predictions[2] = "a blue circle and a red square"
    scores = relation_scores(predictions, scenes)
    assert (scores["relation_precision"], scores["relation_coverage"]) == (1.0, 0.5)
    assert relation_scores({3: "a yellow star"}, scenes)["relation_precision"] == 0.0


def test_every_relation_the_generator_states_holds_and_its_inverse_does_not():
    stated_total = 0
    for index in range(200):
        rng = np.random.default_rng([7, 0, index])
        _, objects = render_scene(rng, SIZE)
        scene = Scene(objects, SIZE)
        for caption in make_captions(rng, objects, 5, SIZE):
            for stated in parse_relations(caption):
                stated_total += 1
                assert holds(stated, scene), caption
                flipped = StatedRelation(stated.subject, INVERSE[stated.relation], stated.object)
                assert not holds(flipped, scene), caption
    assert stated_total > 100
    assert set(RELATIONS) == {"left", "right", "above", "below"}
    assert relation(RED, BLUE, SIZE) == "left"
