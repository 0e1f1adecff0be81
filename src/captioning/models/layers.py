"""Pieces the decoders share: recurrent cells by name, feature standardisation, additive
attention, and state-dict names kept across a change of module layout."""

from __future__ import annotations

import torch
from torch import nn

from captioning.config import CELL_NAMES, check_registry
from captioning.errors import UnknownNameError
from captioning.models.base import State

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

    # The score is v.tanh(x) + b with x = W1 f + W2 h, computed as (2v).sigmoid(2x) + (b - sum v):
    # the same function, and torch's float sigmoid is 3x faster than its tanh on AVX2 (the tanh
    # was a third of a training step's attention). The 2 is folded into the projections' weights.

    def precompute(self, features: torch.Tensor) -> torch.Tensor:
        """The features' share of 2x (B, L, A), once per batch."""
        proj = self.feature_proj
        return nn.functional.linear(features, 2.0 * proj.weight, 2.0 * proj.bias)

    def scores(
        self,
        projected: torch.Tensor,
        hidden: torch.Tensor,
        query_extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score logits (N, G, L) of R = N * G query rows ``hidden`` (R, H) over N images'
        ``projected`` (N, L, A, from ``precompute``); ``query_extra`` (R, A) is added to the
        projected query.

        The G rows of an image (beam search's beams, see ``Decoder.shared_state``) share its
        ``projected``: broadcast, not copied G times, so a step reads it once.
        """
        proj = self.hidden_proj
        query = nn.functional.linear(hidden, 2.0 * proj.weight, 2.0 * proj.bias)  # (R, A)
        if query_extra is not None:
            query = query + 2.0 * query_extra
        query = query.view(projected.size(0), -1, 1, query.size(-1))  # (N, G, 1, A)
        energy = (projected.unsqueeze(1) + query).sigmoid_()  # (N, G, L, A), in place: one tensor
        weight, bias = self.score.weight, self.score.bias  # (1, A), (1,) or None
        shift = -weight.sum(dim=1) if bias is None else bias - weight.sum()
        return nn.functional.linear(energy, 2.0 * weight, shift).squeeze(-1)

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


def keep_saved_names(module: nn.Module, renames: dict[str, str]) -> None:
    """Save ``module``'s state with each key prefix of ``renames`` (a module path) under the
    name it maps to, and load that name back: weights saved before a layer moved keep loading,
    and new ones are saved as before."""
    back = {saved: current for current, saved in renames.items()}

    def save(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        renamed = [(_renamed(key, prefix, renames), value) for key, value in state.items()]
        state.clear()  # refilled in the same order, so the keys keep their places
        state.update(renamed)

    def load(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
        for key in list(state):
            current = _renamed(key, prefix, back)
            if current != key:
                state[current] = state.pop(key)

    module.register_state_dict_post_hook(save)
    module.register_load_state_dict_pre_hook(load)


def _renamed(key: str, prefix: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(prefix + old):
            return prefix + new + key[len(prefix + old) :]
    return key
