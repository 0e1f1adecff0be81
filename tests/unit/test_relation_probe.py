"""The teacher-forced relation probe (evaluation.relation_probe): the word and axis shares count
what the decoder ranks first at each relation word, each caption read against its own image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from captioning.data.vocab import SPECIALS, Vocab
from captioning.evaluation.relation_probe import probe_relation_words

WORDS = (
    "a",
    "red",
    "blue",
    "circle",
    "square",
    "to",
    "the",
    "of",
    "left",
    "right",
    "above",
    "below",
)
VOCAB = Vocab(itos=(*SPECIALS, *WORDS), max_length=24)


class ReadsTheImage(nn.Module):
    """Logits (M, T, V) that put the word named by the image's feature first at every step."""

    def forward(self, features, captions, rows):
        word = features[rows, 0, 0].long()  # (M,): the id the image "knows"
        logits = torch.zeros(captions.size(0), captions.size(1) - 1, len(VOCAB))
        logits[torch.arange(captions.size(0)), :, word] = 1.0
        return SimpleNamespace(logits=logits)


def images(*words: str) -> np.ndarray:
    return np.array([[[VOCAB.stoi[w]]] for w in words], dtype=np.float16)  # (N, 1, 1)


CAPTIONS = [
    ["a red circle to the left of a blue square", "a red circle and a blue square"],
    ["a blue square to the right of a red circle"],
    ["a red circle above a blue square"],
]


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_each_caption_is_read_against_its_own_image(batch_size):
    result = probe_relation_words(
        ReadsTheImage(), VOCAB, images("left", "right", "above"), CAPTIONS, batch_size=batch_size
    )
    assert result.probed == 3  # the caption without a relation is not probed
    assert result.word_right == 1.0 and result.axis_right == 1.0
    assert result.by_word["left"] == (1, 1) and result.by_word["below"] == (0, 0)


def test_a_decoder_that_always_says_left_gets_the_axis_not_the_word():
    result = probe_relation_words(ReadsTheImage(), VOCAB, images("left", "left", "left"), CAPTIONS)
    assert result.word_right == pytest.approx(1 / 3)
    assert result.axis_right == pytest.approx(2 / 3)  # right is on left's axis; above is not
    assert result.by_word["right"] == (0, 1)


def test_a_vocabulary_without_relation_words_is_refused():
    plain = Vocab(itos=(*SPECIALS, "a", "cat"), max_length=8)
    with pytest.raises(ValueError, match="relation word"):
        probe_relation_words(ReadsTheImage(), plain, images(), [])
