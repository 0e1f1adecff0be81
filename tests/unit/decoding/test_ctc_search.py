import itertools
import math

import pytest
import torch

from captioning.decoding import ctc


def test_collapse_merges_repeats_then_drops_blanks():
    assert ctc.collapse([1, 1, 0, 1, 2, 2, 0, 0, 3], blank=0) == [1, 1, 2, 3]
    assert ctc.collapse([0, 0, 0], blank=0) == []
    assert ctc.collapse([2, 2, 2], blank=0) == [2]


def test_best_path_reads_each_frames_argmax_and_scores_the_path():
    probs = torch.tensor([[[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]])
    [(tokens, score)] = ctc.best_path(probs.log(), blank=0)
    assert tokens == [1, 2]
    assert score == pytest.approx(math.log(0.8 * 0.7 * 0.9 * 0.8), rel=1e-5)


def brute_force(log_probs: torch.Tensor, blank: int) -> dict[tuple[int, ...], float]:
    """Every frame path's probability, summed per reading."""
    probs = log_probs.exp().tolist()
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(log_probs.size(1)), repeat=log_probs.size(0)):
        p = math.prod(probs[t][c] for t, c in enumerate(path))
        key = tuple(ctc.collapse(list(path), blank))
        totals[key] = totals.get(key, 0.0) + p
    return totals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_beam_search_finds_the_most_likely_readings(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(5, 4, generator=generator) * 2, dim=-1)
    exact = sorted(brute_force(log_probs, 0).items(), key=lambda kv: kv[1], reverse=True)
    # A beam wide enough to keep every prefix is exact: the three best readings and their mass.
    found = ctc.prefix_beam_search(log_probs, blank=0, beam_size=200, n_best=3)
    assert [tuple(t) for t, _ in found] == [k for k, _ in exact[:3]]
    for (_, score), (_, p) in zip(found, exact[:3], strict=True):
        assert math.exp(score) == pytest.approx(p, rel=1e-6)
    # A narrow beam drops paths: its score is a lower bound of its reading's mass.
    [(tokens, score)] = ctc.prefix_beam_search(log_probs, blank=0, beam_size=3)
    assert 0 < math.exp(score) <= dict(exact)[tuple(tokens)] * (1 + 1e-6)


def test_prefix_beam_search_beats_best_path_when_paths_share_a_reading():
    # Best path is "blank, blank" (0.36); "a" is spelt by a-a, a-blank, blank-a: 0.64 together.
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    [(greedy, _)] = ctc.best_path(probs.log().unsqueeze(0), blank=0)
    [(beam, score)] = ctc.prefix_beam_search(probs.log(), blank=0, beam_size=2)
    assert greedy == [] and beam == [1]
    assert math.exp(score) == pytest.approx(0.64)
    with pytest.raises(ValueError, match="n_best"):
        ctc.prefix_beam_search(probs.log(), blank=0, beam_size=2, n_best=3)
