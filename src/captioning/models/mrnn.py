"""m-RNN (Mao et al. 2015): a language model and the image joined in a multimodal layer.

Two word-embedding layers give w(t); a recurrent layer r(t) = ReLU(U_r r(t-1) + W w(t)) carries
the sentence so far and never sees the image; at every step the multimodal layer
m(t) = g(V_w w(t) + V_r r(t) + V_I I), with Mao et al.'s scaled tanh g(x) = 1.7159 tanh(2x/3),
joins word, recurrent state and image I (here the mean-pooled feature, as m-RNN reads AlexNet's
fc7 vector), and the softmax reads m(t). As the recurrence does not depend on the image,
teacher forcing runs it over the whole caption in one call.
"""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, State
from captioning.models.layers import FeatureStandardiser


def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class MultimodalRNNDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.standardise = FeatureStandardiser(feature_dim)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)  # word embedding layer I
        self.embedding2 = nn.Linear(cfg.embed_dim, cfg.embed_dim)  # word embedding layer II
        self.recurrent = nn.RNN(
            cfg.embed_dim, cfg.hidden_dim, nonlinearity="relu", batch_first=True
        )
        self.word_mm = nn.Linear(cfg.embed_dim, cfg.multimodal_dim)  # V_w
        self.recurrent_mm = nn.Linear(cfg.hidden_dim, cfg.multimodal_dim, bias=False)  # V_r
        self.image_mm = nn.Linear(feature_dim, cfg.multimodal_dim, bias=False)  # V_I
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.multimodal_dim, vocab_size)
        self.hidden_dim = cfg.hidden_dim

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.embedding2(self.dropout(self.embedding(tokens))))  # (..., E)

    def multimodal(
        self, words: torch.Tensor, recurrent: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        joined = self.word_mm(words) + self.recurrent_mm(recurrent) + image  # (..., M)
        return self.dropout(scaled_tanh(joined))

    def init_state(self, features: torch.Tensor) -> State:
        image = self.image_mm(self.standardise(features).mean(dim=1))  # (B, M): V_I I, once
        return {"image": image, "r": image.new_zeros(image.size(0), self.hidden_dim)}

    def recur(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        r = self.recurrent(words.unsqueeze(1), state["r"].unsqueeze(0))[0].squeeze(1)  # (B, H)
        return self.multimodal(words, r, state["image"]), {**state, "r": r}, None

    def recur_caption(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, list[None]]:
        """The whole caption's recurrence in one nn.RNN call: words (B, T, E) -> (B, T, M)."""
        recurrent, _ = self.recurrent(words, state["r"].unsqueeze(0))  # (B, T, H)
        joined = self.multimodal(words, recurrent, state["image"].unsqueeze(1))  # (B, T, M)
        return joined, [None] * words.size(1)
