"""The transformer decoder: its key/value cache, its 2-D grid positions and its config.

What every decoder must do (step == forward, overfitting, rows, beam searches) is checked for it
in test_decoders.py and tests/unit/decoding/test_search.py; here is what is its own.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from captioning.config import ConfigError, DecoderConfig, TransformerConfig, from_dict
from captioning.decoding.search import beam_search, greedy_search
from captioning.features.encoders import grid_of_locations
from captioning.models import build_decoder
from captioning.models.transformer import grid_positions

VOCAB, CHANNELS = 13, 24
TINY = TransformerConfig(layers=3, heads=2, d_model=16, ffn_dim=32, grid_layers=1)


def make(locations: int = 9, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = DecoderConfig(transformer=dataclasses.replace(TINY, **changes))
    return build_decoder(
        "transformer", cfg, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=locations
    )


def captions(n: int, t: int) -> torch.Tensor:
    words = torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(2))
    words[:, 0] = 1
    return words


def features(n: int, locations: int = 9) -> torch.Tensor:
    return torch.randn(n, locations, CHANNELS, generator=torch.Generator().manual_seed(1))


def test_cached_steps_give_the_teacher_forced_logits_and_attention():
    decoder = make().eval()
    feats, words = features(4), captions(4, 16)
    out = decoder(feats, words)
    state = decoder.init_state(feats)
    for t in range(words.size(1) - 1):
        logits, state, alpha = decoder.step(words[:, t], state)
        torch.testing.assert_close(logits, out.logits[:, t], rtol=0, atol=1e-5)
        torch.testing.assert_close(alpha, out.alphas[:, t], rtol=0, atol=1e-6)
        # one more word in every layer's cache
        assert all(state[f"keys{i}"].shape == (4, 2, t + 1, 8) for i in range(3))


def test_beams_read_their_image_grid_broadcast_not_copied():
    """G rows per image (beam search's layout): the grid's keys/values keep one row per image,
    pass through every step as the same tensors, and give each row what its own image gives."""
    decoder = make().eval()
    feats, words = features(2), captions(6, 8)  # 3 rows per image
    rows = torch.arange(2).repeat_interleave(3)
    alone = decoder(feats[rows], words)
    state = decoder.init_state(feats)
    shared = {key: state[key] for key in decoder.shared_state}
    state = {k: v if k in decoder.shared_state else v[rows] for k, v in state.items()}
    for t in range(words.size(1) - 1):
        logits, state, alpha = decoder.step(words[:, t], state)
        torch.testing.assert_close(logits, alone.logits[:, t], rtol=0, atol=1e-5)
        torch.testing.assert_close(alpha, alone.alphas[:, t], rtol=0, atol=1e-6)
        assert all(state[key] is shared[key] for key in shared)
    assert len(shared) == 6  # keys and values of each of the 3 layers
    assert all(state[key].shape == (2, 2, 9, 8) for key in shared)  # (N, heads, L, d_head)


def test_beam_of_one_is_greedy_and_a_wider_beam_scores_at_least_as_well():
    decoder = make().eval()
    with torch.no_grad():
        decoder.out.weight.mul_(4)
    feats = features(5)
    search = dict(start_id=1, end_id=2, max_length=10)
    greedy = greedy_search(decoder, feats, **search)
    beam1 = beam_search(decoder, feats, beam_size=1, **search)
    beam5 = beam_search(decoder, feats, beam_size=5, **search)
    assert [h.tokens for h in beam1] == [h.tokens for h in greedy]
    assert all(b.score >= g.score - 1e-5 for b, g in zip(beam5, greedy, strict=True))
    for hyp in beam5:  # heat-maps: one map over the grid per word
        assert hyp.alphas.shape == (len(hyp.tokens), 9)


def test_the_heat_map_is_the_last_layers_cross_attention_over_the_grid():
    decoder = make().eval()
    feats, words = features(2), captions(2, 5)
    seen = []
    last = decoder.layers[-1].cross_attention
    read = last.read

    def spy(*args, **kwargs):
        seen.append(read(*args, **kwargs)[1])
        return read(*args, **kwargs)

    last.read = spy
    out = decoder(feats, words)
    (weights,) = seen  # (B, T, L), the mean over the heads
    torch.testing.assert_close(out.alphas, weights)
    torch.testing.assert_close(out.alphas.sum(-1), torch.ones(2, 4))


def test_the_grid_shape_comes_from_the_encoders_with_that_many_locations():
    assert grid_of_locations(80) == (4, 20)  # captcha_cnn's 60x160 input
    assert grid_of_locations(49) == (7, 7)
    assert grid_of_locations(196) == (14, 14)
    assert grid_of_locations(1) == (1, 1)
    assert grid_of_locations(9) == (3, 3)  # no encoder has it: a square
    assert grid_of_locations(10) is None  # neither: the decoder reads one row of 10


def test_2d_positions_share_the_row_half_along_a_row_and_the_column_half_down_a_column():
    enc = grid_positions(4, 20, 16).view(4, 20, 16)
    assert torch.equal(enc[2, :, :8], enc[2, :1, :8].expand(20, 8))  # same row, same first half
    assert torch.equal(enc[:, 5, 8:], enc[:1, 5, 8:].expand(4, 8))  # same column, second half
    assert len({tuple(v.tolist()) for v in enc.view(80, 16)}) == 80  # every location its own
    assert torch.equal(make(80).grid_position, grid_positions(4, 20, 16))
    assert torch.equal(make(10).grid_position, grid_positions(1, 10, 16))  # 1-D fallback


def test_the_grid_positions_are_saved_with_the_weights():
    """A loaded model reads the grid as it was trained, whatever encoders exist by then."""
    decoder = make(80)
    assert torch.equal(decoder.state_dict()["grid_position"], grid_positions(4, 20, 16))


def test_words_past_the_training_length_still_decode():
    """Sinusoidal word positions have no table to run off: 60 steps decode."""
    decoder = make().eval()
    with torch.no_grad():
        decoder.out.bias[2] = -1e4  # never <end>
    (hyp,) = greedy_search(decoder, features(1), start_id=1, end_id=2, max_length=60)
    assert len(hyp.tokens) == 60


def test_the_default_dims_build_and_read_only_their_own_section():
    cfg = DecoderConfig()
    decoder = build_decoder(
        "transformer", cfg, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=49
    )
    assert len(decoder.layers) == cfg.transformer.layers == 3
    assert decoder.out.in_features == cfg.transformer.d_model == 128
    other = dataclasses.replace(cfg, embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0)
    rebuilt = build_decoder(
        "transformer", other, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=49
    )
    assert rebuilt.state_dict().keys() == decoder.state_dict().keys()
    assert all(
        a.shape == b.shape
        for a, b in zip(rebuilt.state_dict().values(), decoder.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("layers", 0, ">= 1"),
        ("d_model", 18, "a multiple of 4"),
        ("d_model", 20, "a multiple of heads"),  # heads 8
        ("dropout", 1.0, "in [0, 1)"),
        ("grid_layers", -1, ">= 0"),
    ],
)
def test_transformer_params_are_validated(key, value, expected):
    raw = {"transformer": {"heads": 8, key: value}}
    pattern = rf"train\.model\.transformer\.{key}'.*{re.escape(expected)}"
    with pytest.raises(ConfigError, match=pattern):
        from_dict(DecoderConfig, raw, path="params.yaml", prefix="train.model.")
