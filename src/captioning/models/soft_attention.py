"""Show, Attend and Tell (Xu et al. 2015): LSTM decoder with soft attention.

Deterministic soft attention over the encoder grid, the f_beta gate on the context vector,
h0/c0 from the mean feature, and the doubly stochastic regulariser
alpha_c * sum_l (1 - sum_t alpha_tl)^2 (the shared layers: show_attend_tell.py).
``cell: gru`` swaps the LSTM for a GRU (then there is no c0).
"""

from __future__ import annotations

from typing import Any

import torch

from captioning.models.base import DecoderOutput, State
from captioning.models.show_attend_tell import ShowAttendTellDecoder


class SoftAttentionDecoder(ShowAttendTellDecoder):
    reads_word_in_query = True
    # Its feature standardiser was a BatchNorm1d of its own, saved as feature_norm.*.
    saved_names = {"standardise.norm.": "feature_norm."}
    # Read per image by the attention: beam search does not copy them for each beam.
    shared_state = frozenset({"feats", "projected"})

    def recur(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One step up to the output layer: (B, E) word embedding -> (B, H) dropped-out h."""
        word = None if self.word_query is None else self.word_query(embedded)  # (B, A)
        context, alpha = self.attention(state["feats"], state["projected"], state["h"], word)
        hidden, state = self.read(embedded, context, state)
        return hidden, state, alpha

    def aux_loss(
        self, out: DecoderOutput, captions: torch.Tensor, extras: list[Any]
    ) -> torch.Tensor:
        """The doubly stochastic regulariser over the attention maps (B, T, L)."""
        # Padding steps must not count towards the regulariser: mask them out.
        mask = (captions[:, 1:] != 0).unsqueeze(-1).float()  # (B, T, 1)
        coverage = (out.alphas * mask).sum(dim=1)  # (B, L)
        return self.cfg.alpha_c * ((1.0 - coverage) ** 2).mean()
