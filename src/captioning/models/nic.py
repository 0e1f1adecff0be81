"""Show and Tell (NIC, Vinyals et al. 2015): an LSTM that sees the image once.

The mean-pooled feature is embedded into the word space and fed as the input at t = -1; from
then on the LSTM reads only words. Vinyals et al. found that feeding the image at every step
overfits (the network exploits noise in the image), which is what m-RNN does instead.
"""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, State
from captioning.models.layers import FeatureStandardiser, cell_step


class ShowAndTellDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.standardise = FeatureStandardiser(feature_dim)
        self.image_embed = nn.Linear(feature_dim, cfg.embed_dim)  # W_I: image -> word space
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)  # W_e
        self.cell = nn.LSTMCell(cfg.embed_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        self.hidden_dim = cfg.hidden_dim

    def init_state(self, features: torch.Tensor) -> State:
        pooled = self.standardise(features).mean(dim=1)  # (B, C)
        image = self.dropout(self.image_embed(pooled))  # (B, E), the input x_{-1}
        zeros = image.new_zeros(image.size(0), self.hidden_dim)  # (B, H)
        return cell_step(self.cell, image, {"h": zeros, "c": zeros})

    def recur(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        state = cell_step(self.cell, self.dropout(embedded), state)
        return self.dropout(state["h"]), state, None
