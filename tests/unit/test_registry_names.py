"""Each registry's names equal the light copy in captioning.config that params.yaml is checked
against, and a registry that differs from it fails at import naming both lists."""

from __future__ import annotations

import pytest

from captioning import config
from captioning.config import check_registry


def test_every_registry_has_exactly_its_config_names():
    from captioning.data.sources.registry import SOURCES
    from captioning.evaluation import DECODINGS, PER_IMAGE_SCORES
    from captioning.features.encoders import ENCODERS
    from captioning.models import DECODERS
    from captioning.models.layers import CELLS

    for registry, names in [
        (SOURCES, config.SOURCE_NAMES),
        (ENCODERS, config.ENCODER_NAMES),
        (DECODERS, config.DECODER_NAMES),
        (CELLS, config.CELL_NAMES),
        (DECODINGS, config.DECODING_NAMES),
        (PER_IMAGE_SCORES, config.PER_IMAGE_SCORE_NAMES),
    ]:
        assert sorted(registry) == sorted(names)
        assert len(set(names)) == len(names)


def test_word_scores_give_the_names_they_declare():
    from captioning.metrics.word_accuracy import SCORE_NAMES, word_scores

    corpus, per_image = word_scores({1: "cat"}, {1: ["cat"]})
    assert sorted(corpus) == sorted(per_image[1]) == sorted(SCORE_NAMES)


def test_a_name_added_to_one_list_only_fails_naming_both():
    with pytest.raises(RuntimeError) as info:
        check_registry("decoder", {"nic": 1, "mine": 2}, ("nic",), "DECODER_NAMES")
    message = str(info.value)
    assert "the decoder registry has ['mine', 'nic']" in message
    assert "captioning.config.DECODER_NAMES has ['nic']" in message
    check_registry("decoder", {"nic": 1}, ("nic",), "DECODER_NAMES")  # equal: nothing raised


def test_unknown_names_in_the_registries_are_captioning_errors():
    from captioning.data.sources.registry import fetch
    from captioning.errors import CaptioningError
    from captioning.features.encoders import get_encoder_spec
    from captioning.models import build_decoder
    from captioning.models.layers import make_cell

    calls = [
        lambda: get_encoder_spec("resnet102"),
        lambda: build_decoder(
            "nick", config.DecoderConfig(), vocab_size=5, feature_dim=4, num_locations=1
        ),
        lambda: make_cell("rnn", 2, 2),
        lambda: fetch(_UnknownSource(), "unused"),
    ]
    for call in calls:
        with pytest.raises(CaptioningError, match=r"unknown \w+ '\w+'; choose one of \["):
            call()


class _UnknownSource:
    """A FetchConfig-like object that params.yaml could not have produced."""

    source = "coco2018"
