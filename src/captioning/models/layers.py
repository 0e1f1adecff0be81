"""Pieces the decoders share: recurrent cells by name, feature standardisation, additive
attention, and the teacher-forced unroll that does the per-batch work once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from captioning.config import CELL_NAMES, check_registry
from captioning.errors import UnknownNameError
from captioning.models.base import Decoder, State

CELLS: dict[str, type[nn.RNNCellBase]] = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}
check_registry("cell", CELLS, CELL_NAMES, "CELL_NAMES")


def make_cell(kind: str, input_size: int, hidden_size: int) -> nn.RNNCellBase:
    if kind not in CELLS:
        raise UnknownNameError(f"unknown cell {kind!r}; choose one of {sorted(CELLS)}")
    return CELLS[kind](input_size, hidden_size)


def cell_step(cell: nn.RNNCellBase, x: torch.Tensor, state: State) -> State:
    """One step of an LSTM (state h, c) or GRU (state h) cell; returns the updated entries."""
    if isinstance(cell, nn.LSTMCell):
        h, c = cell(x, (state["h"], state["c"]))
        return {"h": h, "c": c}
    return {"h": cell(x, state["h"])}


class FeatureStandardiser(nn.Module):
    """Per-channel standardisation of cached features (B, L, C), nothing learned.

    Cached CNN features differ in scale by 1000x between channels (ReLU6 outputs of
    EfficientNet-Lite0); the statistics are taken over every location of every image, so a
    batch of one image still has L values per channel.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, affine=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(features.float().flatten(0, 1)).view(features.shape)  # (B, L, C)


class AdditiveAttention(nn.Module):
    """Bahdanau's additive score v^T tanh(W1 f_l + W2 h) over L locations (soft_attention,
    bahdanau_gru, hard_attention's location policy)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def precompute(self, features: torch.Tensor) -> torch.Tensor:
        return self.feature_proj(features)  # (B, L, A), once per batch

    def scores(
        self,
        projected: torch.Tensor,
        hidden: torch.Tensor,
        query_extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score logits (N, G, L) of R = N * G query rows ``hidden`` (R, H) over N images'
        ``projected`` (N, L, A); ``query_extra`` (R, A) is added to the projected query.

        The G rows of an image (beam search's beams, see ``Decoder.shared_state``) share its
        ``projected``: broadcast, not copied G times, so a step reads it once.
        """
        query = self.hidden_proj(hidden)  # (R, A)
        if query_extra is not None:
            query = query + query_extra
        query = query.view(projected.size(0), -1, 1, query.size(-1))  # (N, G, 1, A)
        energy = (projected.unsqueeze(1) + query).tanh_()  # (N, G, L, A), in place: one tensor
        return self.score(energy).squeeze(-1)  # (N, G, L)

    def forward(
        self,
        features: torch.Tensor,
        projected: torch.Tensor,
        hidden: torch.Tensor,
        query_extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (R, D) and weights (R, L) of the ``scores`` query rows over ``features``
        (N, L, D), shared by each image's G rows as ``projected`` is."""
        alpha = torch.softmax(self.scores(projected, hidden, query_extra), dim=-1)  # (N, G, L)
        context = torch.bmm(alpha, features)  # (N, G, D)
        return context.flatten(0, 1), alpha.flatten(0, 1)


# recur(embedded word (B, E), state) -> (output features (B, H), new state, per-step extra)
Recur = Callable[[torch.Tensor, State], tuple[torch.Tensor, State, Any]]


def unroll(
    recur: Recur,
    embed: nn.Module,
    out: Callable[[torch.Tensor], torch.Tensor],
    captions: torch.Tensor,
    state: State,
    sample_prob: float,
) -> tuple[torch.Tensor, list[Any]]:
    """Teacher-forced unroll: logits (B, T, V) for tokens 1..T and each step's extra.

    Under teacher forcing every word is embedded at once and the output layer runs once over
    all steps after the loop; only the recurrence is per step. Scheduled sampling needs each
    step's logits to draw the next input, so it embeds and projects step by step.
    """
    steps = captions.size(1) - 1
    extras: list[Any] = []
    if sample_prob <= 0.0:
        embedded = embed(captions[:, :steps])  # (B, T, E)
        outputs = []
        for t in range(steps):
            output, state, extra = recur(embedded[:, t], state)
            outputs.append(output)
            extras.append(extra)
        return out(torch.stack(outputs, dim=1)), extras  # (B, T, V)
    logits: list[torch.Tensor] = []
    for t in range(steps):
        tokens = Decoder.next_input(captions, t, logits[-1] if logits else None, sample_prob)
        output, state, extra = recur(embed(tokens), state)
        logits.append(out(output))
        extras.append(extra)
    return torch.stack(logits, dim=1), extras
