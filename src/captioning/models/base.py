"""The frame every decoder shares. A decoder is its ``init_state`` (the per-image work) and its
``recur`` (one recurrent update); this class runs them a word at a time (``step``, for the
searches) and over whole captions (``forward``, teacher forcing for training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V): predictions for tokens 1..T of the caption
    alphas: torch.Tensor | None  # (B, T, L) attention weights, if the decoder attends
    aux_loss: torch.Tensor  # scalar regulariser added to the cross-entropy (0 if none)


class Decoder(nn.Module):
    """A caption decoder over cached encoder features of shape (B, L, C).

    Subclasses write ``init_state`` and ``recur``, name their word embedding ``embedding`` and
    their output layer ``out`` (or override ``embed`` and ``project``), and override
    ``attention_of``, ``recur_caption`` or ``aux_loss`` only where they differ.
    """

    # State keys that hold one row per image even when ``step`` runs G rows per image (G beams):
    # a decoder that lists a key here reads it broadcast over the image's G contiguous rows.
    shared_state: ClassVar[frozenset[str]] = frozenset()
    # How it is trained and read: "sequence" (teacher forcing, word-by-word searches) or "ctc"
    # (frames scored at once: the CTC loss, decoding.ctc).
    kind: ClassVar[str] = "sequence"

    def init_state(self, features: torch.Tensor) -> State:
        """Everything a step needs that depends only on the image (computed once per batch)."""
        raise NotImplementedError

    def recur(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, State, Any]:
        """One recurrent update: the embedded word (B, E) -> the output (B, H) that ``project``
        turns into logits, the new state, and the step's extra: its attention (B, L), None for
        a decoder that does not attend, or whatever ``attention_of`` and ``aux_loss`` read."""
        raise NotImplementedError

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)  # (..., E)

    def project(self, output: torch.Tensor) -> torch.Tensor:
        return self.out(output)  # (..., V)

    @staticmethod
    def attention_of(extra: Any) -> torch.Tensor | None:
        """The attention (B, L) in a step's extra, or None."""
        return extra

    def recur_caption(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, list[Any]]:
        """Teacher forcing's recurrence over every word (B, T, E) -> outputs (B, T, H) and each
        step's extra; a decoder whose recurrence does not need a loop overrides it."""
        outputs, extras = [], []
        for t in range(embedded.size(1)):
            output, state, extra = self.recur(embedded[:, t], state)
            outputs.append(output)
            extras.append(extra)
        return torch.stack(outputs, dim=1), extras

    def aux_loss(
        self, out: DecoderOutput, captions: torch.Tensor, extras: list[Any]
    ) -> torch.Tensor:
        """The regulariser the training loop adds to the cross-entropy, from the teacher-forced
        ``out`` (its logits and alphas) and each step's extra: ``out``'s 0 unless overridden."""
        return out.aux_loss

    def step(
        self, tokens: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One time step: tokens (B,) -> logits (B, V), the new state, attention (B, L) or None."""
        output, state, extra = self.recur(self.embed(tokens), state)
        return self.project(output), state, self.attention_of(extra)

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

        Under teacher forcing every word is embedded at once and the output layer runs once over
        all steps after the recurrence; scheduled sampling needs each step's logits to draw the
        next input, so it embeds and projects step by step.
        """
        state = self.start(features, rows)
        if sample_prob <= 0.0:
            outputs, extras = self.recur_caption(self.embed(captions[:, :-1]), state)
            logits = self.project(outputs)  # (B, T, V)
        else:
            logits, extras = self.sampled_caption(captions, state, sample_prob)
        attention = [self.attention_of(extra) for extra in extras]
        attends = bool(attention) and attention[0] is not None
        alphas = torch.stack(attention, dim=1) if attends else None  # (B, T, L)
        out = DecoderOutput(logits, alphas, logits.new_zeros(()))
        out.aux_loss = self.aux_loss(out, captions, extras)
        return out

    def sampled_caption(
        self, captions: torch.Tensor, state: State, sample_prob: float
    ) -> tuple[torch.Tensor, list[Any]]:
        """Scheduled sampling's unroll: logits (B, T, V) and each step's extra."""
        logits: list[torch.Tensor] = []
        extras = []
        for t in range(captions.size(1) - 1):
            tokens = self.next_input(captions, t, logits[-1] if logits else None, sample_prob)
            output, state, extra = self.recur(self.embed(tokens), state)
            logits.append(self.project(output))
            extras.append(extra)
        return torch.stack(logits, dim=1), extras

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
