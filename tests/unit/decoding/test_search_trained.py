"""Beam search, greedy and sampling on a trained tiny model and on an exactly solvable one."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from tiny_models import (
    CHANNELS,
    END,
    LOCATIONS,
    START,
    MarkovDecoder,
    synthetic_captions,
    train_tiny_soft_attention,
)

from captioning.decoding import search as search_module
from captioning.decoding.search import (
    beam_search,
    beam_search_n_best,
    greedy_search,
    length_penalty_factor,
    ranking_score,
    sample_search,
)

IDS = dict(start_id=START, end_id=END)


@pytest.fixture(scope="module")
def trained_decoder():
    return train_tiny_soft_attention()


def test_the_fixture_model_learned_its_task(trained_decoder):
    torch.manual_seed(1)
    features = torch.randn(64, LOCATIONS, CHANNELS)
    truth = synthetic_captions(features)
    greedy = greedy_search(trained_decoder, features, max_length=8, **IDS)
    exact = [
        h.tokens == [t for t in row[1:].tolist() if t > END]
        for h, row in zip(greedy, truth, strict=True)
    ]
    # Chance is below 1 %: the searches below run on a model that has learned something.
    assert sum(exact) / len(exact) > 0.2


@pytest.fixture(scope="module")
def test_features() -> torch.Tensor:
    return torch.randn(20, LOCATIONS, CHANNELS, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(("length_penalty", "min_length"), [(0.0, 0), (1.0, 0), (0.5, 3)])
def test_beam_one_equals_greedy_on_trained_model(
    trained_decoder, test_features, length_penalty, min_length
):
    kwargs = dict(max_length=8, min_length=min_length, **IDS)
    greedy = greedy_search(trained_decoder, test_features, **kwargs)
    beam = [
        hyps[0]
        for hyps in beam_search_n_best(
            trained_decoder,
            test_features,
            beam_size=1,
            n_best=1,
            length_penalty=length_penalty,
            **kwargs,
        )
    ]
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-5)


@pytest.mark.parametrize(("length_penalty", "min_length"), [(0.0, 0), (1.0, 0), (0.7, 3)])
def test_batched_beam_equals_one_image_at_a_time_on_trained_model(
    trained_decoder, test_features, length_penalty, min_length
):
    kwargs = dict(
        max_length=8, beam_size=5, n_best=3, length_penalty=length_penalty, min_length=min_length
    )
    batched = beam_search_n_best(trained_decoder, test_features, **kwargs, **IDS)
    single = [
        beam_search_n_best(trained_decoder, test_features[i : i + 1], **kwargs, **IDS)[0]
        for i in range(len(test_features))
    ]
    assert [[h.tokens for h in hyps] for hyps in batched] == [
        [h.tokens for h in hyps] for hyps in single
    ]
    flat = [h.score for hyps in batched for h in hyps]
    assert flat == pytest.approx([h.score for hyps in single for h in hyps], abs=1e-4)
    for b, s in zip(batched, single, strict=True):
        for hb, hs in zip(b, s, strict=True):
            torch.testing.assert_close(hb.alphas, hs.alphas, atol=1e-5, rtol=0)


def test_min_length_is_respected(trained_decoder, test_features):
    free = beam_search(trained_decoder, test_features, max_length=8, beam_size=3, **IDS)
    assert min(len(h.tokens) for h in free) < 4  # the constraint below does something
    for search in (greedy_search, beam_search, sample_search):
        extra = {"beam_size": 3} if search is beam_search else {}
        for hyp in search(
            trained_decoder, test_features, max_length=8, min_length=4, **extra, **IDS
        ):
            assert 4 <= len(hyp.tokens) <= 8


def test_n_best_is_sorted_distinct_and_starts_with_the_best(trained_decoder, test_features):
    n_best = beam_search_n_best(
        trained_decoder,
        test_features,
        max_length=8,
        beam_size=5,
        n_best=5,
        length_penalty=1.0,
        **IDS,
    )
    best = beam_search(
        trained_decoder, test_features, max_length=8, beam_size=5, length_penalty=1.0, **IDS
    )
    for hyps, top in zip(n_best, best, strict=True):
        assert len(hyps) == 5 and hyps[0].tokens == top.tokens
        ranks = [ranking_score(h, 1.0) for h in hyps]
        assert ranks == sorted(ranks, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5


def test_n_best_larger_than_beam_is_refused(trained_decoder, test_features):
    with pytest.raises(ValueError, match="n_best"):
        beam_search_n_best(
            trained_decoder, test_features, max_length=4, beam_size=2, n_best=3, **IDS
        )


# --- exact answers: a Markov decoder whose every caption can be scored by enumeration ---


def enumerate_captions(decoder: MarkovDecoder, features, max_length: int, min_length: int):
    """Every caption of one image (words = every id but <end>) with its log P(words, <end>)."""
    bias = decoder.image_bias(features.mean(dim=1))[0]
    log_probs = torch.log_softmax(decoder.table + bias, dim=-1)  # (prev, next)
    words = [i for i in range(decoder.table.size(0)) if i != END]
    out = {}
    for n in range(min_length, max_length + 1):
        for caption in itertools.product(words, repeat=n):
            previous, total = START, 0.0
            for word in caption:
                total += float(log_probs[previous, word])
                previous = word
            out[caption] = total + float(log_probs[previous, END])
    return out


@pytest.mark.parametrize(("length_penalty", "min_length"), [(0.0, 0), (1.0, 0), (3.0, 0), (0.0, 2)])
def test_wide_beam_finds_the_exact_n_best(length_penalty, min_length):
    torch.manual_seed(0)
    decoder = MarkovDecoder().eval()
    features = torch.randn(3, LOCATIONS, CHANNELS)
    max_length = 3
    with torch.no_grad():
        results = beam_search_n_best(
            decoder,
            features,
            max_length=max_length,
            beam_size=160,  # more than all 156 captions: nothing is ever pruned
            n_best=4,
            length_penalty=length_penalty,
            min_length=min_length,
            **IDS,
        )
        for i, hyps in enumerate(results):
            exact = enumerate_captions(decoder, features[i : i + 1], max_length, min_length)
            ranked = sorted(
                exact,
                key=lambda c: exact[c] / length_penalty_factor(len(c) + 1, length_penalty),
                reverse=True,
            )
            assert [tuple(h.tokens) for h in hyps] == ranked[:4]
            assert [h.score for h in hyps] == pytest.approx(
                [exact[c] for c in ranked[:4]], abs=1e-4
            )


def test_length_penalty_lengthens_captions():
    torch.manual_seed(0)
    decoder = MarkovDecoder(seed=3).eval()
    features = torch.randn(40, LOCATIONS, CHANNELS)
    lengths = {}
    for alpha in (0.0, 4.0):
        hyps = beam_search(
            decoder, features, max_length=6, beam_size=8, length_penalty=alpha, **IDS
        )
        lengths[alpha] = sum(len(h.tokens) for h in hyps)
    assert lengths[4.0] > lengths[0.0]


# --- sampling ---


def test_sampling_is_seeded(trained_decoder, test_features):
    def run(seed):
        hyps = sample_search(trained_decoder, test_features, max_length=8, seed=seed, **IDS)
        return [h.tokens for h in hyps]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_low_temperature_approaches_greedy(trained_decoder, test_features):
    greedy = [h.tokens for h in greedy_search(trained_decoder, test_features, max_length=8, **IDS)]
    hot = sample_search(
        trained_decoder, test_features, max_length=8, temperature=1.5, seed=0, **IDS
    )
    cold = sample_search(
        trained_decoder, test_features, max_length=8, temperature=1e-3, seed=0, **IDS
    )
    zero = sample_search(trained_decoder, test_features, max_length=8, temperature=0.0, **IDS)
    assert [h.tokens for h in cold] == greedy
    assert [h.tokens for h in zero] == greedy
    assert [h.tokens for h in hot] != greedy


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_first_word_frequencies_follow_the_tempered_distribution(temperature):
    torch.manual_seed(0)
    decoder = MarkovDecoder().eval()
    draws = 6000
    features = torch.randn(1, LOCATIONS, CHANNELS).expand(draws, -1, -1)
    hyps = sample_search(decoder, features, max_length=1, temperature=temperature, seed=11, **IDS)
    counts = Counter(h.tokens[0] if h.tokens else END for h in hyps)
    with torch.no_grad():
        logits = decoder.table[START] + decoder.image_bias(features[:1].mean(dim=1))[0]
    expected = torch.softmax(logits / temperature, dim=-1)
    for word in range(len(expected)):
        assert counts[word] / draws == pytest.approx(float(expected[word]), abs=0.02)


def test_sample_scores_are_model_log_probabilities():
    torch.manual_seed(0)
    decoder = MarkovDecoder().eval()
    features = torch.randn(5, LOCATIONS, CHANNELS)
    with torch.no_grad():
        for i, hyp in enumerate(
            sample_search(decoder, features, max_length=3, temperature=2.0, seed=3, **IDS)
        ):
            exact = enumerate_captions(decoder, features[i : i + 1], 3, 0)
            assert hyp.score == pytest.approx(exact[tuple(hyp.tokens)], abs=1e-4)


def beam_search_states(decoder, features, beam_size):
    """The state rows (key -> number of rows) ``step`` received at each step of a beam search."""
    seen = []
    step = decoder.step

    def recording_step(tokens, state):
        seen.append({"tokens": len(tokens), **{key: len(v) for key, v in state.items()}})
        return step(tokens, state)

    decoder.step = recording_step
    try:
        beam_search(decoder, features, max_length=8, beam_size=beam_size, **IDS)
    finally:
        del decoder.step
    return seen


def test_images_whose_beams_all_ended_leave_the_batch(trained_decoder, test_features):
    rows = [seen["tokens"] for seen in beam_search_states(trained_decoder, test_features, 3)]
    assert rows[0] == 3 * len(test_features)
    assert rows == sorted(rows, reverse=True) and rows[-1] < rows[0]
    assert all(r % 3 == 0 for r in rows)  # whole images leave, never single beams


def test_shared_state_keeps_one_row_per_image_while_beams_have_k(trained_decoder, test_features):
    # soft_attention reads its image features broadcast over an image's beams: beam search must
    # hand them over uncopied (N rows), the per-beam state with N * k rows, also after images
    # leave the batch.
    seen = beam_search_states(trained_decoder, test_features, 3)
    assert trained_decoder.shared_state == {"feats", "projected"}
    for rows in seen:
        assert rows["feats"] == rows["projected"] == rows["h"] // 3 == rows["c"] // 3
    assert seen[-1]["feats"] < len(test_features)  # images left and their features with them


def test_beam_search_copies_a_batch_to_the_host_once(trained_decoder, test_features, monkeypatch):
    """Images whose beams end at different steps: their captions (words, scores, attention,
    image order) come to the host in one copy each per batch, not at every step an image ends."""
    kwargs = dict(max_length=8, beam_size=3, n_best=2, **IDS)
    endings, copies = [], []
    captions, tolist, cpu = search_module._Trail.captions, torch.Tensor.tolist, torch.Tensor.cpu
    monkeypatch.setattr(
        search_module._Trail, "captions", lambda *a: endings.append(1) or captions(*a)
    )
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: copies.append("tolist") or tolist(t))
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a: copies.append("cpu") or cpu(t, *a))
    beam_search_n_best(trained_decoder, test_features, **kwargs)
    monkeypatch.undo()
    assert len(endings) > 2  # the images ended at different steps
    assert sorted(copies) == ["cpu", "tolist", "tolist", "tolist"]
