"""A CTC head for character vocabularies (CRNN, Shi et al. 2015): the encoder grid's columns
read left to right, each scored over the letters and a blank.

The grid (B, H*W, C) is folded to W frames of H*C (captcha_cnn: 4x20x128 -> 20 frames of 512),
projected to ``hidden_dim``, through ``ctc_layers`` bidirectional recurrent layers of ``cell``
(hidden_dim / 2 each way) and a linear layer to the vocabulary, whose <pad> id is the blank.
Trained with the CTC loss (training.objectives.CTCLoss), read by best path or prefix beam search
(decoding.ctc): no word is fed back, so no language prior pulls a letter towards the word list.
It does not attend: there are no heat-maps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.data.vocab import PAD, SPECIALS
from captioning.models.base import Decoder, DecoderOutput, State

BLANK_ID = SPECIALS.index(PAD)  # <pad> never appears inside a word: it is the blank
RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU}


class CTCReader(Decoder):
    kind: ClassVar[str] = "ctc"

    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        if num_locations % cfg.ctc_columns:
            raise ValueError(
                f"train.model.ctc_columns: {cfg.ctc_columns} does not divide the encoder's "
                f"{num_locations} locations (expected the grid's width)"
            )
        self.cfg = cfg
        self.columns = cfg.ctc_columns
        rows = num_locations // cfg.ctc_columns
        self.feature_dropout = nn.Dropout(cfg.feature_dropout)
        self.project_in = nn.Sequential(nn.Linear(rows * feature_dim, cfg.hidden_dim), nn.ReLU())
        self.recurrent = None
        if cfg.ctc_layers:
            self.recurrent = RECURRENT[cfg.cell](
                cfg.hidden_dim,
                cfg.hidden_dim // 2,
                num_layers=cfg.ctc_layers,
                batch_first=True,
                bidirectional=True,
            )
        width = 2 * (cfg.hidden_dim // 2) if cfg.ctc_layers else cfg.hidden_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(width, vocab_size)

    def frames(self, features: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) grid, row-major -> (B, W, V) logits, one frame per column."""
        b, locations, channels = features.shape
        features = features.to(self.out.weight.dtype)  # cached grids are float16
        grid = features.reshape(b, locations // self.columns, self.columns, channels)
        columns = grid.permute(0, 2, 1, 3).reshape(b, self.columns, -1)  # (B, W, H*C)
        x = self.project_in(self.feature_dropout(columns))
        if self.recurrent is not None:
            x, _ = self.recurrent(x)
        return self.out(self.dropout(x))

    def forward(self, features, captions, rows=None, **_) -> DecoderOutput:  # type: ignore[override]
        """The frames' logits (M, W, V) for each caption's image (``rows``, as ``Decoder``'s).
        ``captions`` is the CTC loss's target, not fed in: nothing to teacher-force or sample."""
        logits = self.frames(features)
        if rows is not None:
            logits = logits.index_select(0, rows)
        return DecoderOutput(logits, None, logits.new_zeros(()))

    def init_state(self, features: torch.Tensor) -> State:
        raise TypeError("a CTC head reads all frames at once: decode it with decoding.ctc")
