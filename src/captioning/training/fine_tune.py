"""Training that back-propagates into the encoder: images from the shards, not cached features.

As sgrvinod's ``fine_tune`` option: the encoder's last ``train.fine_tune.blocks`` blocks are
trained with their own learning rate (``train.fine_tune.lr``) next to the decoder (``train.lr``);
the other blocks are frozen, in eval mode (batch-norm statistics kept). The trainable blocks run
in train mode, so their batch norms adapt (which a from-scratch ``small_cnn`` needs).

A batch source of the training loop (training/loop.py). Each epoch streams the training shards
through a DataLoader (decoding in workers), shuffled by shard order and a sample buffer drawn
from (seed, epoch); hard scenes are drawn ``hard_repeat`` times. The validation split is
re-encoded by the current encoder every epoch. Checkpoints hold the encoder with the decoder;
the loader streams the shards, so a killed run resumes after its last finished epoch. The model
directory gets the encoder's weights (``encoder.safetensors``) beside the decoder's; prediction
and evaluation use them instead of the cached features.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from captioning.config import ConfigError, FeaturesConfig, TrainConfig, to_dict
from captioning.data.shards import iter_samples
from captioning.data.vocab import Vocab
from captioning.features.backbones import Encoder
from captioning.features.cache import FeatureRows, encode_split
from captioning.features.encoders import get_encoder_spec
from captioning.features.encoding import encoder_identity, load_encoder
from captioning.features.loader import shard_files, start_workers_early, training_loader
from captioning.features.weights import state_digest
from captioning.models import Decoder
from captioning.training.batches import (
    CaptionSet,
    Draw,
    caption_batch,
    hard_repeats,
    images_per_batch,
)
from captioning.training.checkpoint import LoopState
from captioning.training.distributed import DistContext
from captioning.training.objectives import PAD_ID
from captioning.training.sources import Batch
from captioning.training.validation import ValSplit

logger = logging.getLogger(__name__)


class EncoderDecoder(nn.Module):
    """The two trained halves under one module, for checkpoints."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder


def trainable_blocks(encoder: Encoder, blocks: int) -> list[nn.Module]:
    """Freeze the encoder but its last ``blocks`` blocks (-1: all); return those blocks."""
    all_blocks = encoder.blocks()
    if blocks > len(all_blocks):
        raise ConfigError(
            f"train.fine_tune.blocks is {blocks}, the encoder has {len(all_blocks)} blocks"
        )
    chosen = all_blocks if blocks == -1 else all_blocks[len(all_blocks) - blocks :]
    encoder.requires_grad_(False)
    for block in chosen:
        block.requires_grad_(True)
    return chosen


def set_train_mode(encoder: Encoder, chosen: list[nn.Module], decoder: Decoder) -> None:
    """Frozen blocks in eval mode (fixed batch-norm statistics), trained ones in train mode."""
    encoder.eval()
    for block in chosen:
        block.train()
    decoder.train()


class EncodedImages:
    """Images of the shards through the encoder, whose last ``train.fine_tune.blocks`` blocks
    train with the decoder at their own learning rate (``train.fine_tune.lr``)."""

    resumes_mid_epoch = False  # the loader streams the shards: no batch order to store

    def __init__(self, shards_dir: str | Path, features: FeaturesConfig) -> None:
        self.shards_dir = Path(shards_dir)
        self.features = features
        self._val: ValSplit | None = None

    def open(self, vocab: Vocab, cfg: TrainConfig, ctx: DistContext, seed: int) -> None:
        self.vocab, self.cfg, self.device, self.seed = vocab, cfg, ctx.device, seed
        ft, features = cfg.fine_tune, self.features
        if ft.num_workers > 0:
            start_workers_early()
        self.spec = get_encoder_spec(features.encoder)
        self.train_files = shard_files(self.shards_dir)["train"]["shards"]  # sizes checked now
        self.encoder = load_encoder(
            self.spec,
            features.pretrained,
            self.device,
            weights_path=features.weights_path,
            seed=seed,
        )
        self.encoder_record = encoder_identity(
            self.spec,
            self.encoder,
            pretrained=features.pretrained,
            weights_path=features.weights_path,
            seed=seed,
        )  # the starting encoder; the trained one's replaces it in the saved model
        self.chosen = trainable_blocks(self.encoder, ft.blocks)
        self.feature_dim, self.num_locations = self.spec.channels, self.spec.locations
        self.repeats = partial(hard_repeats, cfg=cfg)
        self.images_per_epoch = sum(
            self.repeats(meta) for meta, _ in iter_samples(self.shards_dir, "train", images=False)
        )
        logger.info(
            "fine-tuning the last %d of %d blocks of %s (lr %g)",
            len(self.chosen),
            len(self.encoder.blocks()),
            self.spec.name,
            ft.lr,
        )

    def trained_model(self, decoder: Decoder) -> nn.Module:
        return EncoderDecoder(self.encoder, decoder)

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for block in self.chosen for p in block.parameters()]
        return [{"params": params, "lr": self.cfg.fine_tune.lr}]

    def new_epoch(self, epoch: int, rng: np.random.Generator) -> list[list[Draw]]:
        ft = self.cfg.fine_tune
        self._loader = training_loader(
            self.train_files,
            self.spec,
            batch_size=images_per_batch(self.cfg),
            num_workers=ft.num_workers,
            device=self.device,
            seed=self.seed * 1000 + epoch,
            shuffle_buffer=ft.shuffle_buffer,
            repeats=self.repeats,
        )
        return []

    def train_mode(self, decoder: Decoder) -> None:
        set_train_mode(self.encoder, self.chosen, decoder)

    def batches(self, state: LoopState, rng: np.random.Generator) -> Iterator[Batch]:
        for images, infos in self._loader:
            batch_set = CaptionSet.build([info[3]["captions"] for info in infos], self.vocab)
            draws = batch_set.epoch_draws(rng, self.cfg.seq_per_image)
            if not draws:
                continue
            x = self.spec.normalize(images.to(self.device, non_blocking=True))  # channels_last
            image_rows, captions, rows = caption_batch(batch_set, draws, PAD_ID)
            encode = partial(self._encode, image_rows=image_rows)
            # non_blocking: a blocking copy from the host would wait for the GPU's last step
            captions, rows = (t.to(self.device, non_blocking=True) for t in (captions, rows))
            yield Batch(captions, rows, x, encode)

    def _encode(self, images: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        """The drawn images' features (B, G*G, C), encoded as one batch (batch norm's
        statistics are the whole batch's)."""
        fmap = self.encoder(images)  # (B, C, G, G)
        return fmap.flatten(2).transpose(1, 2)[image_rows]

    def validation(self, precision: str) -> ValSplit:
        self.encoder.eval()
        cache = encode_split(
            self.shards_dir,
            "val",
            self.encoder,
            self.spec,
            self.device,
            precision=precision,
            num_workers=self.cfg.fine_tune.num_workers,
        )
        if self._val is None:
            where = f"the val split of {self.shards_dir}"
            self._val = ValSplit.of(cache, self.vocab, self.cfg.early_stopping, where)
        else:  # the captions and scorer stay; the features are the current encoder's
            self._val = dataclasses.replace(self._val, features=FeatureRows(cache))
        return self._val

    def saved_encoder(self) -> tuple[dict[str, Any], nn.Module | None]:
        self.encoder.eval()
        return _trained_identity(self.encoder_record, self.encoder, self.cfg), self.encoder


def _trained_identity(start: dict[str, Any], encoder: Encoder, cfg: TrainConfig) -> dict:
    return {
        **start,
        "pretrained": True,  # its weights are the model's own encoder.safetensors
        "weights": f"fine-tuned ({cfg.fine_tune.blocks} blocks) from {start['weights']}",
        "weights_path": None,
        "init_seed": None,
        "weights_sha256": state_digest(encoder),
        "fine_tuned": to_dict(cfg.fine_tune),
    }
