"""Validation during training: object accuracy of the greedy val captions (shapes), and the
clear error when early stopping asks for it on images without objects."""

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


def scores_for(validator, captions, monkeypatch):
    hypotheses = [Hypothesis(VOCAB.encode(c)[1:-1], 0.0, None) for c in captions]
    monkeypatch.setattr(validation, "greedy_search", lambda *a, **k: hypotheses)
    decoder = torch.nn.Linear(1, 1)  # only its parameters' device is read
    return validator.scores(decoder, torch.zeros(len(CAPTIONS), 1, 1))


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
    validator = Validator.for_split(cache([None, None, None]), VOCAB, EarlyStoppingConfig(), "val")
    assert "object_accuracy" not in scores_for(validator, ["a red circle"] * 3, monkeypatch)


def test_early_stopping_on_object_accuracy_needs_objects():
    with pytest.raises(CaptioningError, match=r"images of the val split of /data/f have no obj"):
        Validator.for_split(
            cache([None, None, None]),
            VOCAB,
            EarlyStoppingConfig(metric="object_accuracy"),
            "the val split of /data/f",
        )
