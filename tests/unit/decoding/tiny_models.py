"""Decoders for the search tests (a helper module, not a conftest: tests/conftest.py owns that name): a tiny soft-attention model trained here for a few seconds,
and a Markov-chain decoder whose caption probabilities can be enumerated exactly."""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models import build_decoder
from captioning.models.base import Decoder, State

PAD, START, END = 0, 1, 2
VOCAB = 12  # <pad> <start> <end> <unk> + 8 words
LOCATIONS, CHANNELS = 4, 8


def synthetic_captions(features: torch.Tensor) -> torch.Tensor:
    """A caption each image's features determine: one word per location while its sum is > 0."""
    words = 4 + features[:, :, :8].argmax(dim=-1)  # (N, L) in 4..11
    keep = torch.cumprod((features.sum(dim=-1) > -1.0).long(), dim=1)  # (N, L): a prefix
    keep[:, 0] = 1  # every caption has at least one word
    captions = torch.full((len(features), LOCATIONS + 2), PAD, dtype=torch.long)
    captions[:, 0] = START
    for i in range(len(features)):
        n = int(keep[i].sum())
        captions[i, 1 : n + 1] = words[i, :n]
        captions[i, n + 1] = END
    return captions


def train_tiny_soft_attention() -> Decoder:
    """soft_attention trained to read the synthetic captions (~2 s on one core)."""
    torch.manual_seed(0)
    cfg = DecoderConfig(
        embed_dim=16,
        hidden_dim=32,
        attention_dim=16,
        feature_proj_dim=16,
        dropout=0.0,
        feature_dropout=0.0,
    )
    decoder = build_decoder(
        "soft_attention",
        cfg,
        vocab_size=VOCAB,
        feature_dim=CHANNELS,
        num_locations=LOCATIONS,
    )
    features = torch.randn(256, LOCATIONS, CHANNELS)
    captions = synthetic_captions(features)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    decoder.train()
    for step in range(150):
        rows = torch.arange(step * 32, step * 32 + 32) % len(features)
        out = decoder(features[rows], captions[rows])
        loss = loss_fn(out.logits.flatten(0, 1), captions[rows, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return decoder.eval()


class MarkovDecoder(Decoder):
    """Next-word logits from a fixed table over the previous word, plus a per-image bias."""

    def __init__(self, vocab: int = 6, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=generator) * 1.5)
        self.image_bias = nn.Linear(CHANNELS, vocab)
        torch.nn.init.normal_(self.image_bias.weight, generator=generator)

    def init_state(self, features: torch.Tensor) -> State:
        return {"bias": self.image_bias(features.mean(dim=1))}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        return self.table[tokens] + state["bias"], state, None
