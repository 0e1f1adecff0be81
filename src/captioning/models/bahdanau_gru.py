"""The TensorFlow image-captioning tutorial's decoder: Bahdanau attention and a GRU.

An FC encoder with ReLU maps every location's feature to the embedding width (the tutorial's
CNN_Encoder); at each step additive attention on the previous hidden state weighs those
locations, the context is concatenated with the word embedding, a GRU reads it, and fc1 -> fc2
(``out``) give the word. The hidden state starts at zero, as in the tutorial.
"""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, State
from captioning.models.layers import AdditiveAttention, FeatureStandardiser


class BahdanauGRUDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.standardise = FeatureStandardiser(feature_dim)
        self.encoder = nn.Linear(feature_dim, cfg.embed_dim)
        self.attention = AdditiveAttention(cfg.embed_dim, cfg.hidden_dim, cfg.attention_dim)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.cell = nn.GRUCell(2 * cfg.embed_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc1 = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)  # the tutorial's fc2
        self.hidden_dim = cfg.hidden_dim

    # Read per image by the attention only: beam search does not copy them for each beam.
    shared_state = frozenset({"feats", "projected"})

    def init_state(self, features: torch.Tensor) -> State:
        feats = torch.relu(self.encoder(self.standardise(features)))  # (B, L, E)
        return {
            "feats": feats,
            "projected": self.attention.precompute(feats),  # (B, L, A)
            "h": feats.new_zeros(feats.size(0), self.hidden_dim),  # (B, H)
        }

    def recur(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        context, alpha = self.attention(state["feats"], state["projected"], state["h"])  # (B, E)
        h = self.cell(torch.cat([context, embedded], dim=-1), state["h"])  # (B, H)
        return self.dropout(h), {**state, "h": h}, alpha

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc1(hidden))  # (..., V)
