"""Where a training run's batches come from: the feature cache (here), or the images of the
shards through an encoder trained with the decoder (``fine_tune.EncodedImages``).

The loop (training/loop.py) asks a source for the decoder's input size, the epoch's batches,
the val split and, at the end, the encoder the model was trained on; the rest (optimiser,
objective, checkpoints, validation, early stopping) is the same for every source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from captioning.config import TrainConfig
from captioning.data.vocab import Vocab
from captioning.devices import pin_memory
from captioning.features.cache import FeatureCache, FeatureRows
from captioning.features.encoding import ENCODER_IDENTITY
from captioning.models import Decoder
from captioning.training.batches import (
    CaptionSet,
    Draw,
    caption_batch,
    hard_repeats,
    images_per_batch,
    length_grouped_batches,
    prefetched,
)
from captioning.training.checkpoint import LoopState
from captioning.training.distributed import DistContext
from captioning.training.objectives import PAD_ID
from captioning.training.validation import ValSplit


def _as_is(inputs: torch.Tensor) -> torch.Tensor:
    return inputs


@dataclass(frozen=True)
class Batch:
    """One optimiser step's captions (M, T), on the device, and rows (M,) mapping each caption
    to its image among the features."""

    captions: torch.Tensor
    rows: torch.Tensor
    inputs: torch.Tensor  # cached features (B, L, C), or images for ``encode``
    encode: Callable[[torch.Tensor], torch.Tensor] = _as_is
    # The images' rows (B,) in the train split, on the host: where an objective finds what
    # else it knows of them (self-critical training: their reference captions). None: unknown.
    image_rows: torch.Tensor | None = None

    def features(self) -> torch.Tensor:
        """The images' features (B, L, C). The objective calls it under autocast, so that an
        encoder being trained runs there, in the graph of the loss."""
        return self.encode(self.inputs)


class BatchSource(Protocol):
    resumes_mid_epoch: bool  # the epoch's batch order is stored: step checkpoints can resume
    feature_dim: int  # the decoder's input: feature_dim channels at num_locations
    num_locations: int
    images_per_epoch: int  # draws per epoch, hard scenes counted hard_repeat times
    encoder_record: dict[str, Any]  # how the features were made (the run config's "encoder")

    def open(self, vocab: Vocab, cfg: TrainConfig, ctx: DistContext, seed: int) -> None:
        """Read the data (and build an encoder to train, from the seeded torch RNG)."""

    def trained_model(self, decoder: Decoder) -> nn.Module:
        """What the checkpoints and the best-so-far weights hold: the decoder and what is
        trained with it."""

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups besides the decoder's."""

    def new_epoch(self, epoch: int, rng: np.random.Generator) -> list[list[Draw]]:
        """Start epoch ``epoch``; its batch order, if the source has one to store."""

    def train_mode(self, decoder: Decoder) -> None: ...

    def batches(self, state: LoopState, rng: np.random.Generator) -> Iterator[Batch]:
        """The rest of the epoch's batches (from ``state.position``); under DDP this rank's
        share of each."""

    def validation(self, precision: str) -> ValSplit:
        """The val split, encoded by the current encoder (computing in ``precision``)."""

    def saved_encoder(self) -> tuple[dict[str, Any], nn.Module | None]:
        """The encoder of the trained model: its record, and its weights if they were trained."""


class CachedFeatures:
    """The feature cache's train split in length-grouped batches of draws, the same global
    batches on every rank; its val split as it was cached.

    Neither split is loaded: each batch's rows are read from the cache file (``FeatureRows``:
    sorted reads, pinned staging memory on CUDA) in a background thread while the step before
    runs, so memory does not grow with the split, on every rank.
    """

    resumes_mid_epoch = True

    def __init__(self, features_dir: str | Path) -> None:
        self.features_dir = Path(features_dir)

    def open(self, vocab: Vocab, cfg: TrainConfig, ctx: DistContext, seed: int) -> None:
        self.cfg, self.ctx = cfg, ctx
        train_cache = FeatureCache.open(self.features_dir, "train")
        val_cache = FeatureCache.open(self.features_dir, "val")
        # Pinned rows copy to the GPU asynchronously, overlapping the step.
        self.train_rows = FeatureRows(train_cache, pin=pin_memory(ctx.device))
        self.train_set = CaptionSet.build(
            train_cache.captions, vocab, [hard_repeats(m, cfg) for m in train_cache.row_meta]
        )
        self.val = ValSplit.of(
            val_cache, vocab, cfg.early_stopping, f"the val split of {self.features_dir}"
        )
        _, self.num_locations, self.feature_dim = self.train_rows.shape
        self.images_per_epoch = int(self.train_set.weights.sum())
        meta = train_cache.meta
        shape = {k: meta[k] for k in ("encoder", "input_size", "grid", "channels")}
        # How to rebuild the encoder at prediction (caches from before the encoder zoo lack it).
        self.encoder_record = shape | {k: meta[k] for k in ENCODER_IDENTITY if k in meta}

    def trained_model(self, decoder: Decoder) -> nn.Module:
        return decoder

    def param_groups(self) -> list[dict[str, Any]]:
        return []

    def new_epoch(self, epoch: int, rng: np.random.Generator) -> list[list[Draw]]:
        """The epoch's draws grouped by caption length, in random order; a batch too small
        for every rank to take part joins the one before."""
        draws = self.train_set.epoch_draws(rng, self.cfg.seq_per_image)
        lengths = [self.train_set.draw_length(d) for d in draws]
        grouped = length_grouped_batches(lengths, images_per_batch(self.cfg), rng)
        return self.ctx.merge_small_batches([[draws[i] for i in batch] for batch in grouped])

    def train_mode(self, decoder: Decoder) -> None:
        decoder.train()

    def batches(self, state: LoopState, rng: np.random.Generator) -> Iterator[Batch]:
        assert state.batches is not None
        device = self.ctx.device
        staged = prefetched(self._staged(state.batches[state.position :]))
        for x, captions, rows, image_rows in staged:
            yield Batch(
                captions.to(device, non_blocking=True),
                rows.to(device, non_blocking=True),
                x.to(device, non_blocking=True),
                image_rows=image_rows,
            )

    def _staged(self, batches: list[list[Draw]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Each batch's features (this rank's share), captions, rows and image rows, in host
        memory."""
        for draws in batches:
            image_rows, captions, rows = caption_batch(
                self.train_set, self.ctx.shard(draws), PAD_ID
            )
            yield self.train_rows[image_rows], captions, rows, image_rows

    def validation(self, precision: str) -> ValSplit:
        return self.val

    def saved_encoder(self) -> tuple[dict[str, Any], nn.Module | None]:
        return self.encoder_record, None
