"""Greedy, sampling and batched beam search over any registered decoder's step function.

Every search works on a batch of images and only calls the decoder's ``init_state``, ``step``
and ``reorder_state`` (``models.base.Decoder``). Every caption ends with <end>: the step after
``max_length`` words allows nothing else, so a score is always log P(words, <end>) and captions
of different searches compare. A CTC head (``kind`` "ctc") is read by its own searches
(decoding.ctc): greedy is its best path, beam search its prefix beam search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioning.decoding import ctc
from captioning.models.base import Decoder, State
from captioning.models.ctc import BLANK_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without <start>, up to and excluding <end>
    score: float  # sum of log-probabilities, <end> included
    alphas: torch.Tensor | None  # (len(tokens), L) attention for each generated word


def length_penalty_factor(length: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT's length penalty (Wu et al. 2016): ((5 + length) / 6) ** alpha; 0 = plain log-prob.

    Beam search ranks hypotheses by ``score / factor``; ``length`` counts <end>. alpha 1 is
    close to dividing by the length; larger alphas favour longer captions more.
    """
    return ((5.0 + length) / 6.0) ** alpha


def ranking_score(hyp: Hypothesis, alpha: float) -> float:
    """The score beam search ranks ``hyp`` by (its log-probability when alpha is 0)."""
    return hyp.score / float(length_penalty_factor(len(hyp.tokens) + 1, alpha))


def _allowed(
    log_probs: torch.Tensor, t: int, end_id: int, min_length: int, max_length: int
) -> torch.Tensor:
    """No <end> before ``min_length`` words; nothing but <end> after ``max_length`` words."""
    if t < min_length:
        log_probs = log_probs.clone()
        log_probs[:, end_id] = float("-inf")
    elif t >= max_length:
        only_end = torch.full_like(log_probs, float("-inf"))
        only_end[:, end_id] = log_probs[:, end_id]
        log_probs = only_end
    return log_probs


def _check_lengths(min_length: int, max_length: int) -> None:
    if max_length < 1 or not 0 <= min_length <= max_length:
        raise ValueError(
            f"expected 0 <= min_length <= max_length and max_length >= 1, "
            f"got min_length={min_length}, max_length={max_length}"
        )


@torch.no_grad()
def greedy_search(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    min_length: int = 0,
) -> list[Hypothesis]:
    """Pick the most likely word at every step, for a batch of images at once."""
    if decoder.kind == "ctc":
        return [hyps[0] for hyps in _ctc_readings(decoder, features, max_length, beam_size=1)]
    return _sequential(decoder, features, start_id, end_id, max_length, min_length, None)


@torch.no_grad()
def sample_search(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    temperature: float = 1.0,
    seed: int = 0,
    min_length: int = 0,
) -> list[Hypothesis]:
    """Draw every word from softmax(logits / temperature), reproducibly from ``seed``.

    Temperature 1 samples the model's own distribution, lower is closer to greedy (0 is greedy),
    higher is more varied. Scores are the model's log-probabilities at temperature 1. One
    generator draws for the whole batch: the same seed and batch give the same captions.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if decoder.kind == "ctc":
        raise ValueError("a CTC head is read by best path or beam search, not sampled")
    sampler = None  # temperature 0: greedy
    if temperature > 0:
        sampler = (temperature, torch.Generator(device=features.device).manual_seed(seed))
    return _sequential(decoder, features, start_id, end_id, max_length, min_length, sampler)


def _sequential(
    decoder: Decoder,
    features: torch.Tensor,
    start_id: int,
    end_id: int,
    max_length: int,
    min_length: int,
    sampler: tuple[float, torch.Generator | None] | None,
) -> list[Hypothesis]:
    """One word per image per step, argmax or sampled (greedy and sampling share this)."""
    steps, scores, alphas = unroll(
        decoder, features, None, start_id, end_id, max_length, min_length, sampler
    )
    return _hypotheses(steps, scores, alphas, end_id)


def sampled_captions(
    decoder: Decoder,
    features: torch.Tensor,
    rows: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions drawn from the decoder's own distribution (temperature 1, torch's global RNG),
    one per entry of ``rows`` (N,), the image in ``features`` it describes, with gradients:
    words (N, T) (<end> after a caption's end) and the sum of the log-probabilities of each
    caption's words, <end> included, in the graph (self-critical training)."""
    steps, scores, _ = unroll(decoder, features, rows, start_id, end_id, max_length, 0, (1.0, None))
    return steps, scores


def unroll(
    decoder: Decoder,
    features: torch.Tensor,
    rows: torch.Tensor | None,
    start_id: int,
    end_id: int,
    max_length: int,
    min_length: int,
    sampler: tuple[float, torch.Generator | None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The word loop: words (N, T), summed log-probabilities (N,) (in the graph where the
    caller has gradients on) and attention (N, T, L) or None; one row per image, or per entry
    of ``rows`` (each an image of ``features``)."""
    _check_lengths(min_length, max_length)
    state = decoder.start(features, rows)
    batch = features.size(0) if rows is None else rows.size(0)
    device = features.device
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    scores = torch.zeros(batch, device=device)
    history, alpha_history = [], []
    for t in range(max_length + 1):
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = _allowed(
            torch.log_softmax(logits.float(), -1), t, end_id, min_length, max_length
        )
        if sampler is None:
            tokens = log_probs.argmax(dim=-1)
        else:
            temperature, generator = sampler
            tempered = torch.softmax(log_probs / temperature, dim=-1)  # masked words stay at 0
            tokens = torch.multinomial(tempered, 1, generator=generator).squeeze(1)
        chosen = log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        # Out of place: autograd keeps each step's ``done`` (sampled_captions' gradients).
        scores = scores + torch.where(done, torch.zeros_like(chosen), chosen)
        history.append(torch.where(done, torch.full_like(tokens, end_id), tokens))
        if alpha is not None:
            alpha_history.append(alpha)
        done = done | (tokens == end_id)
        if bool(done.all()):
            break
    steps = torch.stack(history, dim=1)  # (B, T)
    alphas = torch.stack(alpha_history, dim=1) if alpha_history else None  # (B, T, L)
    return steps, scores, alphas


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
    length_penalty: float = 0.0,
    min_length: int = 0,
) -> list[Hypothesis]:
    """The best beam-search caption of every image (see ``beam_search_n_best``).

    Beam size 1 is greedy search: the same captions without the beam bookkeeping.
    """
    if beam_size == 1 and decoder.kind != "ctc":
        return _sequential(decoder, features, start_id, end_id, max_length, min_length, None)
    n_best = beam_search_n_best(
        decoder,
        features,
        start_id=start_id,
        end_id=end_id,
        max_length=max_length,
        beam_size=beam_size,
        length_penalty=length_penalty,
        min_length=min_length,
        n_best=1,
    )
    return [hyps[0] for hyps in n_best]


@torch.no_grad()
def beam_search_n_best(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
    n_best: int,
    length_penalty: float = 0.0,
    min_length: int = 0,
) -> list[list[Hypothesis]]:
    """Beam search for many images at once; every image keeps its own ``beam_size`` beams.

    Returns, per image, the ``n_best`` final beams, best first by ``ranking_score``. A finished
    hypothesis stays in its beam with its score and length frozen (it can only extend by <end>
    at no cost), so the result for one image does not depend on the other images in the batch.
    The decoder's ``shared_state`` keys keep one row per image (the attention broadcasts them
    over the image's k beams); other state tensors that ``step`` hands back unchanged (the same
    object) are equal across an image's beams, so they are not reordered either. An image whose
    beams have all ended leaves the batch, so long captions do not keep short ones' rows busy.
    """
    _check_lengths(min_length, max_length)
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"expected 1 <= n_best <= beam_size ({beam_size}), got {n_best}")
    if decoder.kind == "ctc":
        return _ctc_readings(decoder, features, max_length, beam_size, n_best)
    batch, k = features.size(0), beam_size
    device = features.device
    state = decoder.init_state(features)
    shared = decoder.shared_state & state.keys()  # (N, ...): one row per image
    beams = torch.arange(batch, device=device).repeat_interleave(k)
    state = _reorder(decoder, state, beams, shared)  # the rest: (N*K, ...), one row per beam
    constant = set(state) - shared  # keys whose rows are equal across the k beams of an image
    images = torch.arange(batch, device=device)  # the input image of each image still searched
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the k beams do not start as k copies.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    lengths = torch.zeros(batch * k, device=device)  # tokens emitted, <end> included
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    trail = _Trail()
    ended_images, ended_captions = [], []  # on the device until the search is over
    for t in range(max_length + 1):
        n = len(images)
        offsets = torch.arange(n, device=device).unsqueeze(1) * k  # (N, 1)
        logits, new_state, alpha = decoder.step(tokens, state)
        constant = {key for key in constant if new_state.get(key) is state[key]}
        log_probs = _allowed(
            torch.log_softmax(logits.float(), -1), t, end_id, min_length, max_length
        )
        vocab = log_probs.size(-1)
        totals = _extend(log_probs, scores, finished, end_id)  # (N*K, V), in place
        new_lengths = torch.where(finished, lengths, lengths + 1)  # (N*K,)
        ranks = totals  # (N*K, V)
        if length_penalty:
            ranks = totals / length_penalty_factor(new_lengths, length_penalty).unsqueeze(1)
        ranks = ranks.view(n, k * vocab)
        flat = ranks.topk(k, dim=-1).indices  # (N, K)
        scores = totals.view(n, k * vocab).gather(1, flat)  # (N, K)
        origin = (flat // vocab + offsets).view(-1)  # (N*K,) beam each new beam extends
        tokens = (flat % vocab).view(-1)
        lengths = new_lengths[origin]
        state = _reorder(decoder, new_state, origin, constant | shared)
        trail.step(tokens, origin, alpha)
        finished = finished[origin] | (tokens == end_id)
        done = finished.view(n, k).all(dim=1)  # (N,) every beam of the image has ended
        if t == max_length:  # the last step: live beams ended; -inf ones (tiny vocab) never do
            done = torch.ones_like(done)
        ended = int(done.sum())  # the one host sync of a step
        if not ended:
            continue
        final = scores / length_penalty_factor(lengths.view(n, k), length_penalty)  # (N, K)
        slots = done.nonzero().squeeze(1)  # (D,)
        order = final[slots].argsort(dim=-1, descending=True, stable=True)[:, :n_best]  # (D, B)
        ended_images.append(images[slots])
        ended_captions.append(
            trail.captions(
                (order + slots.unsqueeze(1) * k).view(-1), scores[slots].gather(1, order)
            )
        )
        if ended == n:
            break
        # Drop the images whose beams have all ended: the others' steps get cheaper.
        keep = (~done).nonzero().squeeze(1)  # (N',)
        rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)  # (N'*K,)
        state = {
            **_reorder(decoder, state, rows, shared),  # shared keys passed through, then:
            **decoder.reorder_state({key: state[key] for key in shared}, keep),
        }
        trail.drop(rows)
        images, scores = images[keep], scores[keep]
        tokens, lengths, finished = tokens[rows], lengths[rows], finished[rows]
    best = _hypotheses(*_concatenate(ended_captions, end_id), end_id)  # one copy to the host
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for i, image in enumerate(torch.cat(ended_images).tolist()):
        results[image] = best[i * n_best : (i + 1) * n_best]
    return results


Captions = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def _concatenate(parts: list[Captions], end_id: int) -> Captions:
    """The captions (words (M, T), scores (M,), attention (M, T, L) or None) of the steps at
    which images ended, as one set: the shorter ones padded with <end> (and zero attention),
    which ``_hypotheses`` cuts off, so that one copy brings every caption to the host."""
    steps = max(words.size(1) for words, _, _ in parts)
    words = torch.cat(
        [torch.nn.functional.pad(w, (0, steps - w.size(1)), value=end_id) for w, _, _ in parts]
    )
    scores = torch.cat([s for _, s, _ in parts])
    if parts[0][2] is None:
        return words, scores, None
    attention = [torch.nn.functional.pad(a, (0, 0, 0, steps - a.size(1))) for _, _, a in parts]
    return words, scores, torch.cat(attention)


def _extend(
    log_probs: torch.Tensor, scores: torch.Tensor, finished: torch.Tensor, end_id: int
) -> torch.Tensor:
    """The score (N*K, V) of every beam extended by every word, written over ``log_probs``:
    a finished beam extends only by <end>, at no cost, so its score stays frozen."""
    end = torch.where(finished, 0.0, log_probs[:, end_id])
    log_probs.masked_fill_(finished.unsqueeze(-1), float("-inf"))
    log_probs[:, end_id] = end
    return log_probs.add_(scores.view(-1, 1))


class _Trail:
    """Each step's words and back-pointers, read back only for the captions that are done.

    Copying every beam's caption so far (and its attention maps) at every step costs time
    quadratic in the caption's length; a step here only keeps the tensors it made.
    """

    def __init__(self) -> None:
        self.words: list[torch.Tensor] = []  # (R,) the word each beam chose at step t
        self.origin: list[torch.Tensor] = []  # (R,) the row of step t's input it extends
        self.attention: list[torch.Tensor | None] = []  # (rows of step t's input, L) or None
        self.kept: list[torch.Tensor | None] = []  # step t's input row -> step t - 1's beam
        self._kept: torch.Tensor | None = None  # the rows the next step's input keeps

    def step(self, words: torch.Tensor, origin: torch.Tensor, alpha: torch.Tensor | None) -> None:
        self.words.append(words)
        self.origin.append(origin)
        self.attention.append(alpha)
        self.kept.append(self._kept)
        self._kept = None

    def drop(self, rows: torch.Tensor) -> None:
        """The next step's input holds only beams ``rows`` of this step (images left)."""
        self._kept = rows

    def captions(self, rows: torch.Tensor, scores: torch.Tensor) -> Captions:
        """The captions of the last step's beams ``rows`` (M,), whose scores are ``scores``:
        words (M, T), scores (M,), attention (M, T, L) or None, on the device."""
        words, maps = [], []
        for t in reversed(range(len(self.words))):
            words.append(self.words[t][rows])
            rows = self.origin[t][rows]
            alpha = self.attention[t]
            if alpha is not None:
                maps.append(alpha[rows])
            kept = self.kept[t]
            if kept is not None:
                rows = kept[rows]
        steps = torch.stack(words[::-1], dim=1)  # (M, T)
        alphas = torch.stack(maps[::-1], dim=1) if maps else None  # (M, T, L)
        return steps, scores.reshape(-1), alphas


def _reorder(decoder: Decoder, state: State, index: torch.Tensor, keep: set[str]) -> State:
    """Select rows ``index`` of every state tensor except those named in ``keep``."""
    if not keep:
        return decoder.reorder_state(state, index)
    moving = decoder.reorder_state({k: v for k, v in state.items() if k not in keep}, index)
    return {**{k: state[k] for k in keep}, **moving}


def _hypotheses(
    steps: torch.Tensor, scores: torch.Tensor, alphas: torch.Tensor | None, end_id: int
) -> list[Hypothesis]:
    """Hypotheses from words (M, T), scores (M,) and attention (M, T, L) or None: each caption
    up to its first <end>; one copy to the host for all of them."""
    attention = alphas.cpu() if alphas is not None else None
    out = []
    for ids, score, row in zip(steps.tolist(), scores.tolist(), range(len(steps)), strict=True):
        length = ids.index(end_id) if end_id in ids else len(ids)
        maps = attention[row, :length] if attention is not None else None
        out.append(Hypothesis(tokens=ids[:length], score=score, alphas=maps))
    return out


def _ctc_readings(
    decoder: Decoder, features: torch.Tensor, max_length: int, beam_size: int, n_best: int = 1
) -> list[list[Hypothesis]]:
    """A CTC head's readings per image: its best path (``beam_size`` 1) or the ``n_best`` of
    prefix beam search; at most ``max_length`` letters, no <end>, no attention."""
    log_probs = torch.log_softmax(decoder.frames(features).float(), dim=-1)
    if beam_size == 1:
        readings = [[reading] for reading in ctc.best_path(log_probs, BLANK_ID)]
    else:
        readings = [ctc.prefix_beam_search(f, BLANK_ID, beam_size, n_best) for f in log_probs]
    return [[Hypothesis(tokens[:max_length], score, None) for tokens, score in r] for r in readings]
