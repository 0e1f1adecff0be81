"""The in-process BLEU and CIDEr-D against pycocoevalcap's own scorers on realistic captions."""

from __future__ import annotations

import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from captioning.metrics.fast import ReferenceIndex, fast_scores

COLOURS = ["red", "green", "blue", "yellow", "white", "purple"]
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = ["small", "large", ""]
RELATIONS = ["left of", "right of", "above", "below", "next to"]
COCO_LIKE = [
    "a man riding a wave on top of a surfboard",
    "a group of people standing around a kitchen",
    "two dogs playing with a frisbee in the grass",
    "a plate of food with broccoli and rice on a table",
    "a cat sitting on a laptop on a desk",
    "a train traveling down the tracks next to a forest",
    "a woman holding an umbrella walking down a street in the rain",
    "a giraffe standing next to a tree in a zoo",
    "a bowl of soup and a bowl of soup and a spoon",  # repeated n-grams
    "people people people on the beach",
    "a red bus",
    "there is a clock on the side of a tall building in the city",
]


def shapes_caption(rng: random.Random) -> str:
    def obj() -> str:
        size = rng.choice(SIZES)
        return " ".join(w for w in ("a", size, rng.choice(COLOURS), rng.choice(SHAPES)) if w)

    form = rng.randrange(4)
    if form == 0:
        return obj()
    if form == 1:
        return f"{obj()} {rng.choice(RELATIONS)} {obj()}"
    if form == 2:
        return f"there is {obj()} and {obj()} and {obj()}"
    return f"{obj()} and {obj()}"


def perturb(caption: str, rng: random.Random) -> str:
    words = caption.split()
    kind = rng.randrange(5)
    if kind == 0 and len(words) > 2:
        del words[rng.randrange(len(words))]
    elif kind == 1:
        words[rng.randrange(len(words))] = rng.choice(COLOURS + SHAPES)
    elif kind == 2:
        words = words + words[-3:]  # repeats the end, as decoders do
    elif kind == 3:
        words = words[: max(1, len(words) // 2)]
    return " ".join(words)


def corpus(n_images: int, seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    references, predictions = {}, {}
    for image in range(n_images):
        if image % 3 == 0:
            refs = [perturb(rng.choice(COCO_LIKE), rng) for _ in range(rng.randint(1, 6))]
        else:
            refs = [shapes_caption(rng) for _ in range(rng.randint(3, 5))]
        references[image] = refs
        predictions[image] = perturb(rng.choice(refs), rng)
    predictions[0] = ""  # an empty caption
    predictions[1] = "a"  # one word
    predictions[2] = references[2][0]  # an exact match
    return predictions, references


def reference_scores(predictions: dict, references: dict) -> tuple[dict, dict]:
    gts = {k: list(v) for k, v in references.items()}
    res = {k: [predictions[k]] for k in references}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    corpus = {f"BLEU-{k + 1}": bleu[k] for k in range(4)} | {"CIDEr": float(cider)}
    per_image = {
        key: {f"BLEU-{k + 1}": bleu_per_image[k][i] for k in range(4)}
        | {"CIDEr": float(cider_per_image[i])}
        for i, key in enumerate(references)
    }
    return corpus, per_image


@pytest.mark.parametrize(("n_images", "seed"), [(300, 0), (57, 1), (3, 2)])
def test_corpus_and_per_image_scores_equal_pycocoevalcap(n_images, seed):
    predictions, references = corpus(n_images, seed)
    expected, expected_per_image = reference_scores(predictions, references)
    got, got_per_image = ReferenceIndex(references).score(predictions)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6, rel=0), name
    assert 0.0 < got["BLEU-4"] < got["BLEU-1"] < 1.0 and got["CIDEr"] > 0.1  # a real corpus
    for key, scores in expected_per_image.items():
        for name, value in scores.items():
            assert got_per_image[key][name] == pytest.approx(value, abs=1e-6, rel=0), (key, name)


def test_one_index_scores_many_prediction_sets():
    predictions, references = corpus(120, 3)
    index = ReferenceIndex(references)
    for shift in range(3):
        keys = list(references)
        shifted = {k: predictions[keys[(i + shift) % len(keys)]] for i, k in enumerate(keys)}
        expected, _ = reference_scores(shifted, references)
        got, _ = index.score(shifted)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-6, rel=0), (shift, name)


def test_perfect_captions_beat_wrong_ones():
    _, references = corpus(60, 4)
    perfect = fast_scores({k: v[0] for k, v in references.items()}, references)
    wrong = fast_scores({k: "an elephant in a hat" for k in references}, references)
    assert perfect["BLEU-4"] > 0.8 and wrong["BLEU-4"] < 0.05
    assert perfect["CIDEr"] > 5 * wrong["CIDEr"]


def test_mismatched_images_and_empty_references_fail_clearly():
    with pytest.raises(ValueError, match="differ on images"):
        fast_scores({1: "a red circle"}, {1: ["a red circle"], 2: ["a star"]})
    with pytest.raises(ValueError, match="image 7 has no reference captions"):
        ReferenceIndex({7: []})


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_captions_score_as_in_the_whole_set(seed):
    """``sample_cider``: any images, repeated, a caption each, scored with the document
    frequencies of all the index's images: what ``score`` gives each image's caption (words and
    n-grams no reference has, repeated n-grams, an empty caption included)."""
    predictions, references = corpus(60, seed)
    index = ReferenceIndex(references)
    rng = random.Random(seed)
    keys = [rng.choice(list(references)) for _ in range(40)]
    captions = [perturb(rng.choice(references[k]), rng) for k in keys]
    captions[:3] = ["zebra zebra zebra zebra", "", captions[2] + " " + captions[2]]
    rewards = index.sample_cider(keys, captions)
    for key, caption, reward in zip(keys, captions, rewards, strict=True):
        _, per_image = index.score({**predictions, key: caption})
        assert reward == pytest.approx(per_image[key]["CIDEr"], abs=1e-9)
