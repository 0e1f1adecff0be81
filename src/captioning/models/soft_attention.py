"""Show, Attend and Tell (Xu et al. 2015): LSTM decoder with soft attention.

Deterministic soft attention over the encoder grid, the f_beta gate on the context vector,
h0/c0 from the mean feature, and the doubly stochastic regulariser
alpha_c * sum_l (1 - sum_t alpha_tl)^2. Cached features are projected to a smaller width and
given a learned position embedding, so the decoder knows where on the grid it attends.
``cell: gru`` swaps the LSTM for a GRU (then there is no c0).
"""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, DecoderOutput, State
from captioning.models.layers import AdditiveAttention, cell_step, make_cell, unroll


class SoftAttentionDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_proj_dim
        # Cached CNN features are sparse and their channels differ in scale by 1000x (ReLU6
        # outputs of EfficientNet-Lite0): standardising each channel lets every one count early.
        # No affine part (feature_in has the bias and scale), so nothing here needs a backward.
        self.feature_norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.feature_dropout = nn.Dropout(cfg.feature_dropout)
        self.feature_in = nn.Linear(feature_dim, d)
        self.position = nn.Parameter(torch.zeros(1, num_locations, d))
        nn.init.normal_(self.position, std=0.02)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.attention = AdditiveAttention(d, cfg.hidden_dim, cfg.attention_dim)
        # h_{t-1} holds a distribution over the objects it may name next; the word fed says which
        # one was named, so the query needs it to attend the same object for the next word.
        self.word_query = (
            nn.Linear(cfg.embed_dim, cfg.attention_dim, bias=False)
            if cfg.attend_with_word
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

    # Read per image by the attention (above): beam search does not copy them for each beam.
    shared_state = frozenset({"feats", "projected"})

    def init_state(self, features: torch.Tensor) -> State:
        # Dropout after the projection: same regularising effect, 5x fewer random draws than
        # on the 1280-wide input (Bernoulli sampling dominated the CPU step time).
        normed = self.feature_norm(features.float().flatten(0, 1)).view(features.shape)  # (B, L, C)
        feats = torch.relu(self.feature_in(normed))  # (B, L, D)
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

    def recur(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One step up to the output layer: (B, E) word embedding -> (B, H) dropped-out h."""
        word = None if self.word_query is None else self.word_query(embedded)  # (B, A)
        context, alpha = self.attention(state["feats"], state["projected"], state["h"], word)
        gated = torch.sigmoid(self.f_beta(state["h"])) * context  # (B, D)
        x = torch.cat([embedded, gated], dim=-1)  # (B, E + D)
        state = {**state, **cell_step(self.cell, x, state)}
        return self.dropout(state["h"]), state, alpha

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        hidden, state, alpha = self.recur(self.embedding(tokens), state)
        return self.out(hidden), state, alpha  # (B, V)

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        sample_prob: float = 0.0,
    ) -> DecoderOutput:
        state = self.start(features, rows)
        logits, alphas = unroll(
            self.recur, self.embedding, self.out, captions, state, sample_prob
        )  # (B, T, V)
        alpha_seq = torch.stack(alphas, dim=1)  # (B, T, L)
        # Padding steps must not count towards the regulariser: mask them out.
        mask = (captions[:, 1:] != 0).unsqueeze(-1).float()  # (B, T, 1)
        coverage = (alpha_seq * mask).sum(dim=1)  # (B, L)
        aux = self.cfg.alpha_c * ((1.0 - coverage) ** 2).mean()
        return DecoderOutput(logits, alpha_seq, aux)
