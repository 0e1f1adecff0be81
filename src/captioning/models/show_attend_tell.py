"""What the two decoders of Show, Attend and Tell (Xu et al. 2015) share: the layers, the state
from the image, and the step after attending (soft_attention.py, hard_attention.py).

Cached features are projected to a smaller width and given a learned position embedding, so
the decoder knows where on the grid it attends; h0 (and c0 for an LSTM) come from the mean
feature; the context is gated by f_beta(h) and fed with the word to the cell
(``train.model.cell``: lstm or gru, which has no c0).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, State
from captioning.models.layers import (
    AdditiveAttention,
    FeatureStandardiser,
    cell_step,
    keep_saved_names,
    make_cell,
)


class ShowAttendTellDecoder(Decoder):
    # Whether train.model.attend_with_word gives this decoder a ``word_query`` layer.
    reads_word_in_query: ClassVar[bool] = False
    # State-dict key prefixes saved under another name ({module path: saved name}).
    saved_names: ClassVar[dict[str, str]] = {}

    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_proj_dim
        self.standardise = FeatureStandardiser(feature_dim)
        self.feature_in = nn.Linear(feature_dim, d)
        self.feature_dropout = nn.Dropout(cfg.feature_dropout)
        self.position = nn.Parameter(torch.zeros(1, num_locations, d))
        nn.init.normal_(self.position, std=0.02)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.attention = AdditiveAttention(d, cfg.hidden_dim, cfg.attention_dim)
        # h_{t-1} holds a distribution over the objects it may name next; the word fed says which
        # one was named, so the query needs it to attend the same object for the next word.
        self.word_query = (
            nn.Linear(cfg.embed_dim, cfg.attention_dim, bias=False)
            if self.reads_word_in_query and cfg.attend_with_word
            else None
        )
        self.init_h = nn.Linear(d, cfg.hidden_dim)
        if cfg.cell == "lstm":
            self.init_c = nn.Linear(d, cfg.hidden_dim)
        self.f_beta = nn.Linear(cfg.hidden_dim, d)
        self.cell = make_cell(cfg.cell, cfg.embed_dim + d, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        # A deep output over [h, context] (Xu et al. eq. 7) was tried on shapes: object accuracy
        # 0.79 vs 0.84 for the plain output at the same budget, so the word is read from h alone.
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        keep_saved_names(self, self.saved_names)

    def init_state(self, features: torch.Tensor) -> State:
        # Dropout after the projection: same regularising effect, 5x fewer random draws than
        # on the 1280-wide input (Bernoulli sampling dominated the CPU step time).
        feats = torch.relu(self.feature_in(self.standardise(features)))  # (B, L, D)
        feats = self.feature_dropout(feats) + self.position  # (B, L, D)
        mean = feats.mean(dim=1)  # (B, D)
        state = {
            "feats": feats,
            "projected": self.attention.precompute(feats),  # (B, L, A)
            "h": torch.tanh(self.init_h(mean)),  # (B, H)
        }
        if self.cfg.cell == "lstm":
            state["c"] = torch.tanh(self.init_c(mean))  # (B, H)
        return state

    def read(
        self, embedded: torch.Tensor, context: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """The step after attending: the word (B, E) and the gated context (B, D) through the
        cell -> the dropped-out h (B, H) and the new state."""
        gated = torch.sigmoid(self.f_beta(state["h"])) * context  # (B, D)
        x = torch.cat([embedded, gated.to(embedded.dtype)], dim=-1)  # (B, E + D)
        state = {**state, **cell_step(self.cell, x, state)}
        return self.dropout(state["h"]), state
