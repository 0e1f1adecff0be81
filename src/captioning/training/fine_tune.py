"""Training that back-propagates into the encoder: images from the shards, not cached features.

As sgrvinod's ``fine_tune`` option: the encoder's last ``train.fine_tune.blocks`` blocks are
trained with their own learning rate (``train.fine_tune.lr``) next to the decoder (``train.lr``);
the other blocks are frozen, in eval mode (batch-norm statistics kept). The trainable blocks run
in train mode, so their batch norms adapt (which a from-scratch ``small_cnn`` needs).

Each epoch streams the training shards through a DataLoader (decoding in workers), shuffled by
shard order and a sample buffer drawn from (seed, epoch); hard scenes are drawn
``hard_repeat`` times. The validation split is re-encoded by the current encoder every epoch.
Checkpoints (encoder + decoder, optimiser, scheduler, scaler, RNG states, best-so-far) and
validation (greedy val captions, early stopping, best epoch kept) are the cached-feature loop's;
the loader streams the shards, so a killed run resumes after its last finished epoch. The model directory gets the
encoder's weights (``encoder.safetensors``) beside the decoder's; prediction and evaluation use
them instead of the cached features.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from captioning.config import ConfigError, FeaturesConfig, TrainConfig, to_dict
from captioning.data.shards import iter_samples
from captioning.data.vocab import Vocab
from captioning.devices import choose_device
from captioning.features.backbones import Encoder
from captioning.features.cache import encode_split
from captioning.features.encoders import EncoderSpec, get_encoder_spec
from captioning.features.encoding import encoder_identity, load_encoder
from captioning.features.loader import shard_files, start_workers_early, training_loader
from captioning.features.weights import state_digest
from captioning.models import Decoder, build_decoder
from captioning.training.batches import CaptionSet, collate
from captioning.training.checkpoint import (
    CHECKPOINT_FILE,
    LoopState,
    Trainables,
    resume,
    save_checkpoint,
)
from captioning.training.loop import (
    EpochCallback,
    StepCallback,
    TrainResult,
    _save_model,
    caption_loss,
    close_epoch,
    finish,
    grad_scaler,
    hard_repeats,
    take_step,
    train_record,
)
from captioning.training.schedules import warmup_cosine
from captioning.training.validation import Validator

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


def train_fine_tuned(
    shards_dir: str | Path,
    vocab_path: str | Path,
    model_dir: str | Path,
    cfg: TrainConfig,
    features: FeaturesConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train the decoder and the encoder's last blocks on images from ``shards_dir``."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = choose_device()
    ft = cfg.fine_tune
    if ft.num_workers > 0:
        start_workers_early()
    vocab = Vocab.load(vocab_path)
    spec = get_encoder_spec(features.encoder)
    train_files = shard_files(Path(shards_dir))["train"]["shards"]  # their sizes checked now

    torch.manual_seed(seed)
    encoder = load_encoder(
        spec, features.pretrained, device, weights_path=features.weights_path, seed=seed
    )
    identity = encoder_identity(
        spec,
        encoder,
        pretrained=features.pretrained,
        weights_path=features.weights_path,
        seed=seed,
    )
    chosen = trainable_blocks(encoder, ft.blocks)
    decoder = build_decoder(
        cfg.decoder,
        cfg.model,
        vocab_size=len(vocab),
        feature_dim=spec.channels,
        num_locations=spec.locations,
    ).to(device)
    model = EncoderDecoder(encoder, decoder)
    encoder_params = [p for block in chosen for p in block.parameters()]
    trained = sum(p.numel() for p in encoder_params) + sum(p.numel() for p in decoder.parameters())
    logger.info(
        "fine-tuning the last %d of %d blocks of %s (lr %g) with the %s decoder: %.2f M "
        "trained parameters on %s",
        len(chosen),
        len(encoder.blocks()),
        spec.name,
        ft.lr,
        cfg.decoder,
        trained / 1e6,
        device,
    )

    repeats = partial(hard_repeats, cfg=cfg)
    draws = sum(repeats(meta) for meta, _ in iter_samples(shards_dir, "train", images=False))
    images_per_batch = max(1, cfg.batch_size // cfg.seq_per_image)
    steps_per_epoch = math.ceil(draws / images_per_batch)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(decoder.parameters()), "lr": cfg.lr},
            {"params": encoder_params, "lr": ft.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    )
    parts = Trainables(
        model, optimizer, scheduler, grad_scaler(device), np.random.default_rng(seed)
    )
    run_config = {
        "decoder": cfg.decoder,
        "train": train_record(cfg),
        "seed": seed,
        "vocab_size": len(vocab),
        "encoder": identity,  # the starting encoder; replaced by the trained one at the end
    }
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
    state = resume(checkpoint, run_config, parts, cfg.early_stopping.metric)
    val_set: CaptionSet | None = None
    validator: Validator | None = None

    started = time.monotonic()  # train.max_minutes counts from here (this invocation)
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch_started = time.monotonic()
        loader = training_loader(
            train_files,
            spec,
            batch_size=images_per_batch,
            num_workers=ft.num_workers,
            device=device,
            seed=seed * 1000 + state.epoch,
            shuffle_buffer=ft.shuffle_buffer,
            repeats=repeats,
        )
        # The loader streams the shards: no batch order to store, so resume is per epoch.
        state.start_epoch([])
        set_train_mode(encoder, chosen, decoder)
        _train_epoch(model, loader, vocab, spec, parts, state, cfg, device, on_step)
        encoder.eval()
        val_cache = encode_split(
            shards_dir, "val", encoder, spec, device, num_workers=ft.num_workers
        )
        if val_set is None or validator is None:
            val_set = CaptionSet.build(val_cache.captions, vocab)
            validator = Validator.for_split(
                val_cache, vocab, cfg.early_stopping, f"the val split of {shards_dir}"
            )
        val_x = torch.from_numpy(val_cache.load_in_memory())
        record = close_epoch(
            state, cfg, parts, decoder, val_x, val_set, validator, images_per_batch, device
        )
        save_checkpoint(checkpoint, run_config, parts, state)
        if on_epoch is not None:
            on_epoch(state.epoch, record)
        if out_of_time(started, time.monotonic() - epoch_started, cfg.max_minutes):
            logger.info("stopping after epoch %d: the next would end past the budget", state.epoch)
            break

    result = finish(state, model, trained)
    encoder.eval()
    final = {
        **run_config,
        "encoder": _trained_identity(identity, encoder, cfg),
        "training": result.summary(cfg.decoder),
    }
    _save_model(Path(model_dir), decoder, vocab, final, encoder=encoder)
    checkpoint.unlink(missing_ok=True)
    return result


def out_of_time(started: float, epoch_seconds: float, max_minutes: float) -> bool:
    """True if another epoch as long as the last would end past ``max_minutes`` (0: never)."""
    if max_minutes <= 0:
        return False
    return time.monotonic() - started + epoch_seconds > max_minutes * 60


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


def _train_epoch(
    model: EncoderDecoder,
    loader: Any,
    vocab: Vocab,
    spec: EncoderSpec,
    parts: Trainables,
    state: LoopState,
    cfg: TrainConfig,
    device: torch.device,
    on_step: StepCallback | None,
) -> None:
    trained = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(
        loader, desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="batch", mininterval=5.0
    )
    for images, infos in progress:
        batch_set = CaptionSet.build([info[3]["captions"] for info in infos], vocab)
        draws = batch_set.epoch_draws(parts.rng, cfg.seq_per_image)
        if not draws:
            continue
        x = spec.normalize(images.to(device, non_blocking=True))  # (B, 3, S, S) channels_last

        def loss_of(sample_prob: float, x=x, batch_set=batch_set, draws=draws):
            fmap = model.encoder(x)  # (B, C, G, G)
            feats = fmap.flatten(2).transpose(1, 2)  # (B, G*G, C)
            feats, captions, rows = collate(feats, batch_set, draws, pad_id=0)
            loss = caption_loss(
                model.decoder, feats, captions.to(device), rows.to(device), sample_prob=sample_prob
            )
            return loss, captions.size(0)

        take_step(loss_of, trained, parts, cfg, state, device, None, on_step)
        progress.set_postfix(loss=f"{state.loss_sum / state.loss_count:.3f}", refresh=False)
