import dataclasses

import pytest
import torch

from captioning.config import DecoderConfig
from captioning.decoding.search import (
    beam_search,
    beam_search_n_best,
    greedy_search,
    sampled_captions,
)
from captioning.models import CELL_CHOICE, DECODERS, build_decoder

VOCAB, START, END = 13, 1, 2
# Every decoder, plus the GRU variant of those with a cell switch.
# The word-by-word decoders (a CTC head has its own tests: test_ctc.py).
SEQUENCE = sorted(name for name, factory in DECODERS.items() if factory.kind == "sequence")
VARIANTS = [(name, "lstm") for name in SEQUENCE] + [
    (name, "gru") for name in sorted(CELL_CHOICE) if name in SEQUENCE
]
IDS = [name if cell == "lstm" else f"{name}-gru" for name, cell in VARIANTS]


def decoder_and_features(name: str, n: int = 6, cell: str = "lstm"):
    torch.manual_seed(3)
    cfg = DecoderConfig(embed_dim=16, hidden_dim=24, attention_dim=12, feature_proj_dim=20)
    cfg = dataclasses.replace(cfg, cell=cell)
    decoder = build_decoder(name, cfg, vocab_size=VOCAB, feature_dim=8, num_locations=4).eval()
    # Make <end> likely enough that some hypotheses finish early and some run to max_length.
    with torch.no_grad():
        decoder.out.bias[END] += 1.5
    return decoder, torch.randn(n, 4, 8)


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_beam_one_equals_greedy(name, cell):
    decoder, features = decoder_and_features(name, cell=cell)
    kwargs = dict(start_id=START, end_id=END, max_length=8)
    greedy = greedy_search(decoder, features, **kwargs)
    beam = [
        hyps[0] for hyps in beam_search_n_best(decoder, features, beam_size=1, n_best=1, **kwargs)
    ]
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-5)


def test_beam_search_of_size_one_is_greedy_search():
    decoder, features = decoder_and_features("soft_attention")
    kwargs = dict(start_id=START, end_id=END, max_length=8, min_length=2)
    greedy = greedy_search(decoder, features, **kwargs)
    beam = beam_search(decoder, features, beam_size=1, length_penalty=0.7, **kwargs)
    assert [(h.tokens, h.score) for h in beam] == [(h.tokens, h.score) for h in greedy]
    assert all(torch.equal(b.alphas, g.alphas) for b, g in zip(beam, greedy, strict=True))


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_batched_beam_equals_one_image_at_a_time(name, cell):
    decoder, features = decoder_and_features(name, cell=cell)
    kwargs = dict(start_id=START, end_id=END, max_length=8, beam_size=4)
    batched = beam_search(decoder, features, **kwargs)
    single = [beam_search(decoder, features[i : i + 1], **kwargs)[0] for i in range(len(features))]
    assert [h.tokens for h in batched] == [h.tokens for h in single]
    assert [h.score for h in batched] == pytest.approx([h.score for h in single], abs=1e-4)


def test_beam_finds_at_least_greedy_score():
    decoder, features = decoder_and_features("soft_attention")
    kwargs = dict(start_id=START, end_id=END, max_length=8)
    greedy = greedy_search(decoder, features, **kwargs)
    beam = beam_search(decoder, features, beam_size=5, **kwargs)
    lengths = [len(h.tokens) for h in greedy]
    assert any(n < 8 for n in lengths)  # the test covers finished hypotheses
    for g, b in zip(greedy, beam, strict=True):
        assert b.score >= g.score - 1e-5


def test_attention_has_one_row_per_word():
    decoder, features = decoder_and_features("soft_attention")
    for hyp in beam_search(
        decoder, features, start_id=START, end_id=END, max_length=8, beam_size=3
    ):
        assert hyp.alphas.shape == (len(hyp.tokens), 4)


def test_captions_never_exceed_max_length():
    decoder, features = decoder_and_features("soft_attention")
    with torch.no_grad():
        decoder.out.bias[END] -= 100.0  # never ends
    kwargs = dict(start_id=START, end_id=END, max_length=3)
    for hyp in greedy_search(decoder, features, **kwargs) + beam_search(
        decoder, features, beam_size=3, **kwargs
    ):
        assert len(hyp.tokens) == 3


@pytest.mark.parametrize("name", SEQUENCE)
def test_alphas_only_from_decoders_that_attend(name):
    # nic and mrnn return alpha None from step: greedy and beam search must still work.
    decoder, features = decoder_and_features(name)
    with torch.no_grad():
        decoder.out.bias[END] -= 100.0  # never ends: every caption has max_length words
    attends = decoder.step(torch.full((6,), START), decoder.init_state(features))[2] is not None
    assert attends == (name not in {"nic", "mrnn"})
    kwargs = dict(start_id=START, end_id=END, max_length=5)
    for hyp in greedy_search(decoder, features, **kwargs) + beam_search(
        decoder, features, beam_size=3, **kwargs
    ):
        assert len(hyp.tokens) == 5 and all(0 <= token < VOCAB for token in hyp.tokens)
        if attends:
            assert hyp.alphas.shape == (5, 4)
        else:
            assert hyp.alphas is None


@pytest.mark.parametrize(("name", "cell"), VARIANTS, ids=IDS)
def test_sampled_captions_carry_their_teacher_forced_log_probability(name, cell):
    """Three samples per image (rows): words up to <end> then <end>; the summed log-probability
    in the graph equals teacher forcing's for the same words (each cached-step decoder and the
    transformer's KV cache included), and it back-propagates into the decoder."""
    decoder, features = decoder_and_features(name, n=3, cell=cell)
    rows = torch.arange(3).repeat_interleave(3)
    torch.manual_seed(0)
    words, log_probs = sampled_captions(
        decoder, features, rows, start_id=START, end_id=END, max_length=6
    )
    assert words.size(0) == 9 and log_probs.requires_grad
    captions = torch.cat([torch.full((9, 1), START), words], dim=1)
    forced = decoder(features, captions, rows).logits.log_softmax(-1)
    chosen = forced.gather(2, words.unsqueeze(2)).squeeze(2)
    ended = torch.cumsum(words == END, dim=1)
    kept = (ended == 0) | ((ended == 1) & (words == END))  # up to and with the first <end>
    assert log_probs.detach() == pytest.approx((chosen * kept).sum(1).detach(), abs=1e-4)
    log_probs.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
