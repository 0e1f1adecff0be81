"""A Transformer decoder (Vaswani et al. 2017) over the feature grid, with pre-LN layers (the
norm before each sub-layer, Xiong et al. 2020: trains without a long warm-up).

The grid's features are standardised, projected to ``d_model`` and given 2-D sinusoidal
positions (half the channels encode the row, half the column), so "left of" and "above" are
directions in the keys; optional self-attention layers over the grid (``grid_layers``) let
regions relate before the words read them. Each decoder layer is masked self-attention over the
words so far, cross-attention over the grid and a feed-forward block.

Decoding one word at a time keeps a key/value cache: each layer's keys and values of the words
already read (``keys<i>``, ``values<i>``, (R, heads, t, d_head), one more row of t per step), and
each layer's keys and values of the grid (``grid_keys<i>``, ``grid_values<i>``), computed once
in ``init_state`` and shared by the beams of an image (``shared_state``). Teacher forcing runs
every word at once under a causal mask (``recur_caption``): the same logits as the cached steps.
The step's attention (what the heat-maps show) is the last layer's cross-attention, averaged over
the heads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from captioning.config import DecoderConfig, TransformerConfig
from captioning.features.encoders import grid_of_locations
from captioning.models.base import Decoder, State
from captioning.models.layers import FeatureStandardiser


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al.'s encoding (P, dim) of positions (P,): sines, then cosines, of
    position / 10000^(2i / dim)."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (dim / 2,)
    angles = positions.float().unsqueeze(1) * frequencies.to(positions.device)  # (P, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (P, dim)


def grid_positions(height: int, width: int, dim: int) -> torch.Tensor:
    """2-D encoding (height * width, dim) of a row-major grid: the row's encoding in the first
    half of the channels, the column's in the second."""
    rows = sinusoid(torch.arange(height), dim // 2)  # (H, dim / 2)
    cols = sinusoid(torch.arange(width), dim // 2)  # (W, dim / 2)
    return torch.cat(
        [
            rows.unsqueeze(1).expand(height, width, -1),
            cols.unsqueeze(0).expand(height, width, -1),
        ],
        dim=-1,
    ).reshape(height * width, dim)


def attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention of R = N * G query rows (R, h, T, d) over N rows of keys and
    values (N, h, S, d): the G rows of one key row (an image's beams) read it broadcast, not
    copied. ``mask`` (T, S) is True where a query may look. -> outputs (R, h, T, d) and the
    weights averaged over the heads (R, T, S)."""
    n, heads, s, d = keys.shape
    r, _, t, _ = query.shape
    g = r // n
    grouped = query.view(n, g, heads, t, d).transpose(1, 2).reshape(n, heads, g * t, d)
    scores = grouped @ keys.transpose(-1, -2) * d**-0.5  # (N, h, G*T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask.repeat(g, 1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (N, h, G*T, S)
    out = (weights.to(values.dtype) @ values).view(n, heads, g, t, d)  # (N, h, G, T, d)
    out = out.transpose(1, 2).reshape(r, heads, t, d)  # (R, h, T, d)
    return out, weights.mean(dim=1).view(r, t, s)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.output = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)  # (B, h, T, d_head)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.key_value(x).chunk(2, dim=-1)  # 2 x (B, S, D)
        return self.split(keys), self.split(values)  # 2 x (B, h, S, d_head)

    def read(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries from x (R, T, D) over keys/values (N, h, S, d_head) -> (R, T, D) and the
        head-averaged weights (R, T, S)."""
        out, weights = attend(self.split(self.query(x)), keys, values, mask)
        return self.output(out.transpose(1, 2).flatten(2)), weights  # (R, T, D)


class PreNormLayer(nn.Module):
    """What every layer here ends with: the pre-LN feed-forward block, and the dropout on each
    residual branch."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ffn_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_dim, cfg.d_model),
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class GridLayer(PreNormLayer):
    """Pre-LN self-attention + feed-forward over the grid's locations (once per image)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        self.attention_norm = nn.LayerNorm(cfg.d_model)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.heads)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        normed = self.attention_norm(grid)  # (B, L, D)
        attended, _ = self.attention.read(normed, *self.attention.keys_values(normed))
        return self.feed_forward(grid + self.dropout(attended))  # (B, L, D)


class DecoderLayer(PreNormLayer):
    """Pre-LN masked self-attention over the words, cross-attention over the grid, FFN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        self.self_norm = nn.LayerNorm(cfg.d_model)
        self.self_attention = MultiHeadAttention(cfg.d_model, cfg.heads)
        self.cross_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attention = MultiHeadAttention(cfg.d_model, cfg.heads)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor],
        grid: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The words x (R, T, D) after the cached ``past`` keys/values (R, h, t, d_head), over
        the grid's keys/values (N, h, L, d_head) -> x, the keys/values grown by T, and the
        cross-attention (R, T, L)."""
        normed = self.self_norm(x)
        keys, values = self.self_attention.keys_values(normed)  # (R, h, T, d_head)
        keys = torch.cat([past[0], keys.to(past[0].dtype)], dim=2)  # (R, h, t + T, d_head)
        values = torch.cat([past[1], values.to(past[1].dtype)], dim=2)
        attended, _ = self.self_attention.read(normed, keys, values, mask)
        x = x + self.dropout(attended)
        attended, weights = self.cross_attention.read(self.cross_norm(x), *grid)
        return self.feed_forward(x + self.dropout(attended)), (keys, values), weights


class TransformerDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        tc = cfg.transformer
        # Each layer's keys and values of the grid (N, h, L, d_head), one contiguous tensor each
        # (a slice of one stacked tensor was copied by every step's matmul): one row per image,
        # read by the cross-attention broadcast over the image's beams.
        self.shared_state = frozenset(
            f"grid_{kind}{i}" for i in range(tc.layers) for kind in ("keys", "values")
        )
        self.d_model, self.heads = tc.d_model, tc.heads
        self.standardise = FeatureStandardiser(feature_dim)
        self.feature_in = nn.Linear(feature_dim, tc.d_model)
        # Saved with the weights: a loaded model reads the grid as it was trained to, whatever
        # encoders are registered by then (grid_of_locations only knows the count).
        height, width = grid_of_locations(num_locations) or (1, num_locations)
        self.register_buffer("grid_position", grid_positions(height, width, tc.d_model))
        self.grid_layers = nn.ModuleList(GridLayer(tc) for _ in range(tc.grid_layers))
        self.grid_norm = nn.LayerNorm(tc.d_model)
        self.embedding = nn.Embedding(vocab_size, tc.d_model)
        nn.init.normal_(self.embedding.weight, std=tc.d_model**-0.5)  # x sqrt(D) in embed
        self.dropout = nn.Dropout(tc.dropout)
        self.layers = nn.ModuleList(DecoderLayer(tc) for _ in range(tc.layers))
        self.final_norm = nn.LayerNorm(tc.d_model)
        self.out = nn.Linear(tc.d_model, vocab_size)

    def init_state(self, features: torch.Tensor) -> State:
        grid = self.feature_in(self.standardise(features)) + self.grid_position  # (B, L, D)
        grid = self.dropout(grid)
        for layer in self.grid_layers:
            grid = layer(grid)
        memory = self.grid_norm(grid)
        empty = memory.new_zeros(memory.size(0), self.heads, 0, self.d_model // self.heads)
        state = {}
        for i, layer in enumerate(self.layers):
            keys, values = layer.cross_attention.keys_values(memory)  # (B, h, L, d_head)
            state[f"grid_keys{i}"], state[f"grid_values{i}"] = (
                keys.contiguous(),
                values.contiguous(),
            )
            state[f"keys{i}"] = state[f"values{i}"] = empty  # (B, h, 0, d_head): no word yet
        return state

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens) * self.d_model**0.5  # (..., D)

    def recur(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word (B, D) after the cached ones -> (B, D), the grown cache, attention (B, L)."""
        output, state, weights = self.words(embedded.unsqueeze(1), state)
        return output.squeeze(1), state, weights.squeeze(1)

    def recur_caption(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every word (B, T, D) at once under the causal mask -> (B, T, D), attention per step."""
        output, _, weights = self.words(embedded, state)
        return output, list(weights.unbind(dim=1))

    def words(
        self, embedded: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Words (R, T, D) following the t words of ``state``'s cache -> their outputs
        (R, T, D), the cache grown to t + T words, and the last layer's attention (R, T, L)."""
        t, steps = state["keys0"].size(2), embedded.size(1)
        positions = torch.arange(t, t + steps, device=embedded.device)
        x = self.dropout(embedded + sinusoid(positions, self.d_model).to(embedded.dtype))
        # Word t + i sees words 0..t + i; a single new word sees the whole cache: no mask.
        mask = None
        if steps > 1:
            mask = torch.ones(steps, t + steps, dtype=torch.bool, device=x.device).tril(t)
        state = dict(state)
        weights = x.new_zeros(0)
        for i, layer in enumerate(self.layers):
            grid = (state[f"grid_keys{i}"], state[f"grid_values{i}"])
            past = (state[f"keys{i}"], state[f"values{i}"])
            x, (state[f"keys{i}"], state[f"values{i}"]), weights = layer(x, past, grid, mask)
        return self.final_norm(x), state, weights
