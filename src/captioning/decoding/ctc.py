"""Decoding a CTC head's frames (Graves et al. 2006): best path and prefix beam search.

A CTC head scores every frame (a column of the image) over the letters and a blank; a reading
is a frame path with repeats merged and blanks dropped. Best path (greedy) takes each frame's
most likely class; prefix beam search keeps the ``beam_size`` most likely readings, each the
sum over all the paths that spell it (so it can beat best path, never do worse on its score).
"""

from __future__ import annotations

import math

import torch

# Classes whose log-probability at a frame is below this are not tried by the beam search:
# they cannot change which readings survive (e^-12 of a frame's mass).
PRUNE_LOG_PROB = -12.0


def collapse(path: list[int], blank: int) -> list[int]:
    """A frame path's reading: repeats merged, then blanks dropped ([a a - a b] -> [a a b])."""
    out, previous = [], None
    for label in path:
        if label != previous and label != blank:
            out.append(label)
        previous = label
    return out


def best_path(log_probs: torch.Tensor, blank: int) -> list[tuple[list[int], float]]:
    """Per image of (B, T, V) log-probabilities: the best path's reading and its log-prob."""
    scores, paths = log_probs.float().max(dim=-1)
    return [
        (collapse(path, blank), float(score))
        for path, score in zip(paths.tolist(), scores.sum(-1).tolist(), strict=True)
    ]


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high = max(a, b)
    return high + math.log(math.exp(a - high) + math.exp(b - high))


# prefix -> (log P(its paths ending in a blank), log P(its paths ending in its last letter))
Beams = dict[tuple[int, ...], tuple[float, float]]


def _add(beams: Beams, prefix: tuple[int, ...], blank_lp: float, label_lp: float) -> None:
    b, nb = beams.get(prefix, (-math.inf, -math.inf))
    beams[prefix] = (_logsumexp(b, blank_lp), _logsumexp(nb, label_lp))


def prefix_beam_search(
    log_probs: torch.Tensor, blank: int, beam_size: int, n_best: int = 1
) -> list[tuple[list[int], float]]:
    """One image's (T, V) log-probabilities -> its ``n_best`` readings and their log-probs
    (summed over every path that spells them), best first."""
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"expected 1 <= n_best <= beam_size ({beam_size}), got {n_best}")
    frames = log_probs.float().cpu().tolist()
    beams: Beams = {(): (0.0, -math.inf)}
    for frame in frames:
        tried = [c for c, lp in enumerate(frame) if lp >= PRUNE_LOG_PROB or c == blank]
        grown: Beams = {}
        for prefix, (b, nb) in beams.items():
            total = _logsumexp(b, nb)
            for c in tried:
                lp = frame[c]
                if c == blank:
                    _add(grown, prefix, total + lp, -math.inf)
                elif prefix and prefix[-1] == c:
                    _add(grown, prefix, -math.inf, nb + lp)  # a repeat merges into one letter
                    _add(grown, (*prefix, c), -math.inf, b + lp)  # after a blank: a second one
                else:
                    _add(grown, (*prefix, c), -math.inf, total + lp)
        ranked = sorted(grown.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)
        beams = dict(ranked[:beam_size])
    ranked = sorted(beams.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)
    return [(list(prefix), _logsumexp(*lps)) for prefix, lps in ranked[:n_best]]
