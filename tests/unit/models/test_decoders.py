"""Every registered decoder (and each GRU variant): forward + backward on tiny random input,
shapes right, no NaN; step == forward; overfitting; rows sharing; scheduled sampling."""

import dataclasses

import pytest
import torch

from captioning.config import ConfigError, DecoderConfig, TransformerConfig, from_dict
from captioning.decoding.search import beam_search_n_best
from captioning.models import CELL_CHOICE, DECODERS, build_decoder

TINY_TRANSFORMER = TransformerConfig(layers=2, heads=2, d_model=16, ffn_dim=32, grid_layers=1)
SMALL = DecoderConfig(
    embed_dim=16,
    hidden_dim=24,
    attention_dim=12,
    feature_proj_dim=20,
    transformer=TINY_TRANSFORMER,
)
VOCAB, FEATURES, LOCATIONS = 11, 32, 9
# (decoder, cell): every decoder, plus the GRU variant of those with a cell switch.
# The word-by-word decoders (a CTC head has its own tests: test_ctc.py).
SEQUENCE = sorted(name for name, factory in DECODERS.items() if factory.kind == "sequence")
VARIANTS = [(name, "lstm") for name in SEQUENCE] + [
    (name, "gru") for name in sorted(CELL_CHOICE) if name in SEQUENCE
]
IDS = [name if cell == "lstm" else f"{name}-gru" for name, cell in VARIANTS]


def make(name: str, cell: str = "lstm", **changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, cell=cell, **changes)
    return build_decoder(name, cfg, vocab_size=VOCAB, feature_dim=FEATURES, num_locations=LOCATIONS)


def batch(b: int = 3, t: int = 6):
    torch.manual_seed(1)
    features = torch.randn(b, LOCATIONS, FEATURES).half()
    captions = torch.randint(4, VOCAB, (b, t))
    captions[:, 0] = 1
    captions[0, 4:] = 0  # a padded caption
    return features, captions


def cross_entropy(logits, captions):
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), captions[:, 1:].reshape(-1), ignore_index=0
    )


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_forward_backward_shapes_and_finite(name, cell):
    decoder = make(name, cell)
    features, captions = batch()
    out = decoder(features, captions)
    assert out.logits.shape == (3, 5, VOCAB)
    if out.alphas is not None:
        assert out.alphas.shape == (3, 5, LOCATIONS)
        torch.testing.assert_close(out.alphas.sum(-1), torch.ones(3, 5))
    assert out.aux_loss.shape == ()
    loss = out.logits.logsumexp(-1).mean() + out.aux_loss
    loss.backward()
    grads = [p.grad for p in decoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(CELL_CHOICE & set(SEQUENCE)))
def test_cell_switch_builds_a_gru_without_cell_state(name):
    lstm, gru = make(name, "lstm"), make(name, "gru")
    assert isinstance(lstm.cell, torch.nn.LSTMCell) and isinstance(gru.cell, torch.nn.GRUCell)
    features, _ = batch()
    assert "c" in lstm.init_state(features) and "c" not in gru.init_state(features)


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_step_matches_teacher_forced_forward(name, cell):
    decoder = make(name, cell).eval()
    features, captions = batch()
    out = decoder(features, captions)
    state = decoder.init_state(features)
    for t in range(captions.size(1) - 1):
        step_logits, state, alpha = decoder.step(captions[:, t], state)
        torch.testing.assert_close(step_logits, out.logits[:, t])
        assert (alpha is None) == (out.alphas is None)
        if alpha is not None:
            torch.testing.assert_close(alpha, out.alphas[:, t])


def test_soft_attention_forward_is_its_step_loop_bit_for_bit():
    # The batched embedding and output layer change the order of work, not one bit of the
    # result, dropout included (same random draws in the same order).
    decoder = make("soft_attention")
    features, captions = batch()
    torch.manual_seed(7)
    logits = decoder(features, captions).logits
    torch.manual_seed(7)
    state = decoder.init_state(features)
    for t in range(captions.size(1) - 1):
        step_logits, state, _ = decoder.step(captions[:, t], state)
        assert torch.equal(step_logits, logits[:, t])


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_overfits_a_small_batch(name, cell):
    # Without dropout: the test checks that every parameter path learns, not the noise.
    # hard_attention needs no other budget: h0 comes from the image, and the policy sharpens.
    no_dropout = dataclasses.replace(TINY_TRANSFORMER, dropout=0.0)
    decoder = make(name, cell, dropout=0.0, feature_dropout=0.0, transformer=no_dropout)
    features, captions = batch(b=8, t=7)
    captions[0, 4:] = 0
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(150):
        out = decoder(features, captions)
        loss = cross_entropy(out.logits, captions)
        optimizer.zero_grad()
        (loss + out.aux_loss).backward()
        optimizer.step()
    assert loss.item() < 0.1
    # Decoding's rule (hard_attention: the argmax location) fits as well as training's.
    assert cross_entropy(decoder.eval()(features, captions).logits, captions).item() < 0.1


def test_unknown_decoder_lists_choices():
    with pytest.raises(ValueError, match="unknown decoder 'nope'; choose one of"):
        build_decoder("nope", SMALL, vocab_size=3, feature_dim=4, num_locations=1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cell", "rnn"),
        ("multimodal_dim", 0),
        ("reinforce_weight", -1.0),
        ("entropy_weight", -0.1),
        ("baseline_decay", 1.0),
    ],
)
def test_decoder_params_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"train.model.{key}"):
        from_dict(DecoderConfig, {key: value}, path="params.yaml", prefix="train.model.")


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_shared_image_rows_equal_repeated_features(name, cell):
    decoder = make(name, cell).eval()
    features, captions = batch(b=2, t=6)
    captions = torch.cat([captions, captions.flip(0)])  # 4 captions, 2 per image
    rows = torch.tensor([0, 1, 1, 0])
    shared = decoder(features, captions, rows)
    repeated = decoder(features[rows], captions)
    torch.testing.assert_close(shared.logits, repeated.logits)
    torch.testing.assert_close(shared.aux_loss, repeated.aux_loss)


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_scheduled_sampling_at_zero_is_teacher_forcing(name, cell):
    decoder = make(name, cell).eval()
    features, captions = batch()
    torch.testing.assert_close(
        decoder(features, captions, sample_prob=0.0).logits, decoder(features, captions).logits
    )
    torch.manual_seed(3)
    sampled = decoder(features, captions, sample_prob=1.0).logits
    # the first step never samples (it is fed <start>); later steps see the model's own words
    torch.testing.assert_close(sampled[:, 0], decoder(features, captions).logits[:, 0])
    assert not torch.allclose(sampled[:, 1:], decoder(features, captions).logits[:, 1:])


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_batched_beam_search_equals_one_image_at_a_time(name, cell):
    # Covers each decoder's shared_state: keys it declares keep one row per image in the batch.
    decoder = make(name, cell).eval()
    with torch.no_grad():
        decoder.out.weight.mul_(8)  # peaked next-word distributions: no near-ties
        decoder.out.bias[2] += 2.5  # <end> likely: images leave the batch at different steps
    features = torch.randn(6, LOCATIONS, FEATURES, generator=torch.Generator().manual_seed(3))
    search = dict(start_id=1, end_id=2, max_length=8, beam_size=3, n_best=2)
    batched = beam_search_n_best(decoder, features, **search)
    for i, hyps in enumerate(batched):
        (alone,) = beam_search_n_best(decoder, features[i : i + 1], **search)
        assert [h.tokens for h in hyps] == [h.tokens for h in alone], (name, i)
        for got, want in zip(hyps, alone, strict=True):
            assert got.score == pytest.approx(want.score, abs=1e-5)
