"""The interface every decoder shares: teacher-forced forward, and a step function for decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V): predictions for tokens 1..T of the caption
    alphas: torch.Tensor | None  # (B, T, L) attention weights, if the decoder attends
    aux_loss: torch.Tensor  # scalar regulariser added to the cross-entropy (0 if none)


class Decoder(nn.Module):
    """A caption decoder over cached encoder features of shape (B, L, C)."""

    # State keys that hold one row per image even when ``step`` runs G rows per image (G beams):
    # a decoder that lists a key here reads it broadcast over the image's G contiguous rows.
    shared_state: ClassVar[frozenset[str]] = frozenset()

    def init_state(self, features: torch.Tensor) -> State:
        """Everything a step needs that depends only on the image (computed once per batch)."""
        raise NotImplementedError

    def step(
        self, tokens: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One time step: tokens (B,) -> logits (B, V), the new state, attention (B, L) or None."""
        raise NotImplementedError

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        sample_prob: float = 0.0,
    ) -> DecoderOutput:
        """Teacher forcing: feed captions[:, t] and predict captions[:, t + 1].

        ``rows`` (M,) maps each of the M captions to its image in ``features`` (B, L, C), so
        several captions of one image share its per-image work; None means one caption each.
        ``sample_prob`` > 0 is scheduled sampling (Bengio et al. 2015): at every step after the
        first, each caption is fed a word drawn from the decoder's own previous prediction with
        that probability instead of the true word (see ``next_input``).
        """
        raise NotImplementedError

    def start(self, features: torch.Tensor, rows: torch.Tensor | None) -> State:
        """init_state once per image, then one state row per caption."""
        state = self.init_state(features)
        return state if rows is None else self.reorder_state(state, rows)

    @staticmethod
    def next_input(
        captions: torch.Tensor, t: int, previous_logits: torch.Tensor | None, sample_prob: float
    ) -> torch.Tensor:
        """The token fed at step t: the true word, or under scheduled sampling a model sample.

        With ``sample_prob`` 0 nothing random is drawn, so training is exactly teacher forcing
        and consumes no RNG state.
        """
        truth = captions[:, t]
        if sample_prob <= 0.0 or t == 0 or previous_logits is None:
            return truth
        probs = torch.softmax(previous_logits.detach().float(), dim=-1)
        sampled = torch.multinomial(probs, 1).squeeze(1)
        use_model = torch.rand(truth.shape, device=truth.device) < sample_prob
        return torch.where(use_model, sampled, truth)

    @staticmethod
    def reorder_state(state: State, index: torch.Tensor) -> State:
        """Select rows of every state tensor (beam search reorders and expands hypotheses)."""
        return {k: v.index_select(0, index) for k, v in state.items()}
