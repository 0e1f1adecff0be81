"""Validation during training: object accuracy of the greedy val captions (shapes), exact match
of a character reader's words, and the clear errors when early stopping asks for either where it
cannot be scored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from captioning.config import EarlyStoppingConfig, VocabConfig
from captioning.data.vocab import build_vocab
from captioning.decoding.search import Hypothesis
from captioning.errors import CaptioningError
from captioning.training import validation
from captioning.training.validation import Validator

CAPTIONS = [["a red circle"], ["a red circle and a large blue square"], ["a white star"]]
OBJECTS = [
    [{"colour": "red", "shape": "circle"}],
    [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}],
    [{"colour": "white", "shape": "star"}],
]
VOCAB, _ = build_vocab([c for captions in CAPTIONS for c in captions], VocabConfig(min_freq=1))


def cache(objects):
    return SimpleNamespace(captions=CAPTIONS, row_meta=[{"objects": o} for o in objects])


def scores_for(validator, captions, monkeypatch, vocab=VOCAB):
    """The validator's scores when greedy decoding reads ``captions``, one per val image."""
    hypotheses = [Hypothesis(vocab.encode(c)[1:-1], 0.0, None) for c in captions]
    monkeypatch.setattr(validation, "greedy_search", lambda *a, **k: hypotheses)
    decoder = torch.nn.Linear(1, 1)  # only its parameters' device is read
    return validator.scores(decoder, torch.zeros(len(captions), 1, 1))


def test_object_accuracy_is_scored_when_the_objects_are_known(monkeypatch):
    validator = Validator.for_split(
        cache(OBJECTS), VOCAB, EarlyStoppingConfig(metric="object_accuracy"), "val"
    )
    # The second caption names the red circle twice and leaves the blue square out.
    got = ["a red circle", "a red circle and a red circle", "a white star"]
    scores = scores_for(validator, got, monkeypatch)
    assert scores["object_accuracy"] == pytest.approx(2 / 3)
    assert scores["CIDEr"] > 0


def test_without_objects_there_is_no_object_accuracy(monkeypatch):
    cider = EarlyStoppingConfig(metric="CIDEr")
    validator = Validator.for_split(cache([None, None, None]), VOCAB, cider, "val")
    assert "object_accuracy" not in scores_for(validator, ["a red circle"] * 3, monkeypatch)


def test_early_stopping_on_object_accuracy_needs_objects():
    with pytest.raises(CaptioningError, match=r"images of the val split of /data/f have no obj"):
        Validator.for_split(
            cache([None, None, None]),
            VOCAB,
            EarlyStoppingConfig(metric="object_accuracy"),
            "the val split of /data/f",
        )


WORDS = [["chest"], ["palm"], ["city"]]
CHARS, _ = build_vocab([w for words in WORDS for w in words], VocabConfig(level="char"))


def test_a_character_reader_is_scored_by_whole_words_read_exactly(monkeypatch):
    words = SimpleNamespace(captions=WORDS, row_meta=[{}, {}, {}])
    validator = Validator.for_split(words, CHARS, EarlyStoppingConfig(metric="exact_match"), "v")
    scores = scores_for(validator, ["chest", "paim", "city"], monkeypatch, CHARS)  # 1 wrong
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["char_accuracy"] == pytest.approx(1 - 1 / 13)  # 1 edit in 13 letters


def test_captions_have_no_exact_match(monkeypatch):
    validator = Validator.for_split(
        cache(OBJECTS), VOCAB, EarlyStoppingConfig(metric="CIDEr"), "val"
    )
    assert "exact_match" not in scores_for(validator, ["a red circle"] * 3, monkeypatch)


def test_early_stopping_on_exact_match_needs_a_character_vocabulary():
    with pytest.raises(CaptioningError, match=r"vocabulary for the val split of /f is word-level"):
        Validator.for_split(
            cache(OBJECTS), VOCAB, EarlyStoppingConfig(metric="exact_match"), "the val split of /f"
        )


def test_relations_are_scored_when_the_scenes_are_placed(monkeypatch):
    left = {"colour": "red", "shape": "circle", "x": 35, "y": 100, "box": [10, 75, 60, 125]}
    right = {"colour": "blue", "shape": "square", "x": 165, "y": 100, "box": [140, 75, 190, 125]}
    said = [
        "a red circle to the left of a blue square",  # true
        "a red circle above a blue square",  # false
        "a red circle and a blue square",  # states none
    ]
    vocab, _ = build_vocab(said, VocabConfig(min_freq=1))
    placed = SimpleNamespace(
        captions=[[c] for c in said],
        row_meta=[{"objects": [left, right], "width": 224} for _ in said],
    )
    validator = Validator.for_split(placed, vocab, EarlyStoppingConfig(metric="CIDEr"), "val")
    scores = scores_for(validator, said, monkeypatch, vocab)
    assert scores["relation_precision"] == pytest.approx(1 / 2)
    assert scores["relation_coverage"] == pytest.approx(2 / 3)
    # Objects without the image's size (older caches): object accuracy only.
    validator = Validator.for_split(cache(OBJECTS), VOCAB, EarlyStoppingConfig(), "val")
    assert "relation_precision" not in scores_for(validator, ["a red circle"] * 3, monkeypatch)
