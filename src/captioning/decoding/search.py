"""Greedy and batched beam search over any registered decoder's step function."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioning.models.base import Decoder


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without <start>, up to and excluding <end>
    score: float  # sum of log-probabilities, <end> included
    alphas: torch.Tensor | None  # (len(tokens), L) attention for each generated word


@torch.no_grad()
def greedy_search(
    decoder: Decoder, features: torch.Tensor, *, start_id: int, end_id: int, max_length: int
) -> list[Hypothesis]:
    """Pick the most likely word at every step, for a batch of images at once."""
    batch = features.size(0)
    state = decoder.init_state(features)
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=features.device)
    done = torch.zeros(batch, dtype=torch.bool, device=features.device)
    scores = torch.zeros(batch, device=features.device)
    history, alpha_history = [], []
    for _ in range(max_length + 1):
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        best, tokens = log_probs.max(dim=-1)
        scores += torch.where(done, torch.zeros_like(best), best)
        history.append(torch.where(done, torch.full_like(tokens, end_id), tokens))
        if alpha is not None:
            alpha_history.append(alpha)
        done |= tokens == end_id
        if bool(done.all()):
            break
    steps = torch.stack(history, dim=1)  # (B, T)
    alphas = torch.stack(alpha_history, dim=1) if alpha_history else None  # (B, T, L)
    return [
        _hypothesis(steps[i], float(scores[i]), alphas, i, end_id, max_length) for i in range(batch)
    ]


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
) -> list[Hypothesis]:
    """Beam search for many images at once; every image keeps its own ``beam_size`` beams.

    A finished hypothesis stays in its beam with its score frozen (it can only extend by <end>
    at no cost), so the result for one image does not depend on the other images in the batch.
    """
    batch, k = features.size(0), beam_size
    device = features.device
    state = decoder.init_state(features)
    state = decoder.reorder_state(state, torch.arange(batch, device=device).repeat_interleave(k))
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the k beams do not start as k copies.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    sequences = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    alpha_seq: torch.Tensor | None = None
    for _ in range(max_length + 1):
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        vocab = log_probs.size(-1)
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, end_id] = 0.0
        log_probs = torch.where(finished.unsqueeze(-1), frozen, log_probs)
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)  # (B, K)
        origin = flat // vocab + torch.arange(batch, device=device).unsqueeze(1) * k  # (B, K)
        origin = origin.view(-1)
        tokens = (flat % vocab).view(-1)
        state = decoder.reorder_state(state, origin)
        sequences = torch.cat([sequences[origin], tokens.unsqueeze(1)], dim=1)
        if alpha is not None:
            step_alpha = alpha[origin].unsqueeze(1)
            alpha_seq = (
                step_alpha if alpha_seq is None else torch.cat([alpha_seq[origin], step_alpha], 1)
            )
        finished = finished[origin] | (tokens == end_id)
        if bool(finished.all()):
            break
    best = scores.argmax(dim=-1)  # (B,)
    rows = best + torch.arange(batch, device=device) * k
    return [
        _hypothesis(sequences[r], float(scores[i, best[i]]), alpha_seq, int(r), end_id, max_length)
        for i, r in enumerate(rows.tolist())
    ]


def _hypothesis(
    steps: torch.Tensor,
    score: float,
    alphas: torch.Tensor | None,
    row: int,
    end_id: int,
    max_length: int,
) -> Hypothesis:
    ids = steps.tolist()
    # max_length + 1 steps let a caption of max_length words end with <end>; a caption that
    # never ends is cut to max_length words.
    length = min(ids.index(end_id) if end_id in ids else len(ids), max_length)
    attention = alphas[row, :length].cpu() if alphas is not None else None
    return Hypothesis(tokens=ids[:length], score=score, alphas=attention)


def decode_batch(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
) -> list[Hypothesis]:
    """Greedy when ``beam_size`` is 1, beam search otherwise."""
    if beam_size == 1:
        return greedy_search(
            decoder, features, start_id=start_id, end_id=end_id, max_length=max_length
        )
    return beam_search(
        decoder,
        features,
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        beam_size=beam_size,
    )
