"""Teacher-forced training of a registered decoder on cached features.

Resumable: a checkpoint (model, optimiser, scheduler, RNG states, epoch) is written after every
epoch outside the DVC outputs; a re-run with the same config continues from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from captioning.config import TrainConfig, to_dict
from captioning.data.vocab import Vocab
from captioning.devices import autocast, choose_device
from captioning.features.cache import ENCODER_IDENTITY, ENCODER_WEIGHTS_FILE, FeatureCache
from captioning.features.encoders import grid_shape
from captioning.io import atomic_path, write_json
from captioning.models import Decoder, build_decoder
from captioning.training.batches import (
    CaptionSet,
    Draw,
    iterate_batches,
    length_grouped_batches,
)

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    parameters: int


def train_decoder(
    features_dir: str | Path,
    vocab_path: str | Path,
    model_dir: str | Path,
    cfg: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train ``cfg.decoder`` and write decoder.safetensors, vocab.json and config.json."""
    started = time.monotonic()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = choose_device()
    vocab = Vocab.load(vocab_path)
    train_cache = FeatureCache.open(features_dir, "train")
    val_cache = FeatureCache.open(features_dir, "val")
    train_x = torch.from_numpy(train_cache.load_in_memory())  # (N, L, C) float16
    val_x = torch.from_numpy(val_cache.load_in_memory())
    train_set = CaptionSet.build(
        train_cache.captions, vocab, [hard_repeats(m, cfg) for m in train_cache.row_meta]
    )
    val_set = CaptionSet.build(val_cache.captions, vocab)

    torch.manual_seed(seed)
    num_locations, feature_dim = train_x.shape[1], train_x.shape[2]
    decoder = build_decoder(
        cfg.decoder,
        cfg.model,
        vocab_size=len(vocab),
        feature_dim=feature_dim,
        num_locations=num_locations,
    ).to(device)
    parameters = sum(p.numel() for p in decoder.parameters())
    logger.info("%s decoder: %.2f M parameters on %s", cfg.decoder, parameters / 1e6, device)

    images_per_batch = max(1, cfg.batch_size // cfg.seq_per_image)
    steps_per_epoch = math.ceil(int(train_set.weights.sum()) / images_per_batch)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    rng = np.random.default_rng(seed)
    run_config = _run_config(cfg, vocab, train_cache.meta, seed)
    checkpoint = Path(checkpoint_dir) / "last.pt"
    start_epoch, history = _maybe_resume(checkpoint, run_config, decoder, optimizer, scheduler, rng)

    for epoch in range(start_epoch, cfg.epochs):
        draws = train_set.epoch_draws(rng, cfg.seq_per_image)
        lengths = [train_set.draw_length(d) for d in draws]
        batches = [
            [draws[i] for i in batch]
            for batch in length_grouped_batches(lengths, images_per_batch, rng)
        ]
        train_loss = _train_epoch(
            decoder, train_x, train_set, batches, optimizer, scheduler, scaler, cfg, device, epoch
        )
        val_loss = evaluate_loss(decoder, val_x, val_set, images_per_batch, device)
        record = _epoch_record(epoch, cfg, train_loss, val_loss, scheduler, history)
        _save_checkpoint(
            checkpoint, run_config, decoder, optimizer, scheduler, rng, epoch + 1, history
        )
        if on_epoch is not None:
            on_epoch(epoch + 1, record)

    _save_model(Path(model_dir), decoder, vocab, run_config)
    checkpoint.unlink(missing_ok=True)
    return TrainResult(history, time.monotonic() - started, parameters)


def _train_epoch(
    decoder: Decoder,
    features: torch.Tensor,
    caption_set: CaptionSet,
    batches: list[list[Draw]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
) -> float:
    decoder.train()
    total, count = 0.0, 0
    progress = tqdm(
        iterate_batches(features, caption_set, batches, pad_id=0),
        total=len(batches),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        mininterval=5.0,
    )
    for x, captions, rows in progress:
        x = x.to(device, non_blocking=True)
        captions = captions.to(device, non_blocking=True)
        rows = rows.to(device, non_blocking=True)
        with autocast(device):
            loss = caption_loss(decoder, x, captions, rows)
        optimizer_step(loss, decoder.parameters(), optimizer, scheduler, scaler, cfg.grad_clip)
        total += loss.item() * captions.size(0)
        count += captions.size(0)
        progress.set_postfix(loss=f"{total / count:.3f}", refresh=False)
    return total / max(count, 1)


def _epoch_record(
    epoch: int,
    cfg: TrainConfig,
    train_loss: float,
    val_loss: float,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, float]],
) -> dict[str, float]:
    """The epoch's line of the history (appended) and of the log."""
    record = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": scheduler.get_last_lr()[0],
    }
    history.append(record)
    logger.info(
        "epoch %d/%d train_loss %.4f val_loss %.4f", epoch + 1, cfg.epochs, train_loss, val_loss
    )
    return record


def optimizer_step(
    loss: torch.Tensor,
    parameters: Iterable[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> None:
    """Backward (loss-scaled under CUDA AMP), clip the gradient norm, step and advance the LR."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def caption_loss(
    decoder: Decoder,
    features: torch.Tensor,
    captions: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over real tokens only (padding masked) plus the decoder's regulariser."""
    output = decoder(features, captions, rows)
    targets = captions[:, 1:]  # (B, T)
    ce = nn.functional.cross_entropy(
        output.logits.reshape(-1, output.logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=0,
    )
    return ce + output.aux_loss


@torch.no_grad()
def evaluate_loss(
    decoder: Decoder,
    features: torch.Tensor,
    caption_set: CaptionSet,
    images_per_batch: int,
    device: torch.device,
) -> float:
    """Mean teacher-forced cross-entropy over every caption of the split."""
    decoder.eval()
    draws = caption_set.all_draws()
    batches = [draws[i : i + images_per_batch] for i in range(0, len(draws), images_per_batch)]
    total, tokens = 0.0, 0
    for x, captions, rows in iterate_batches(features, caption_set, batches, pad_id=0):
        x, captions, rows = x.to(device), captions.to(device), rows.to(device)
        output = decoder(x, captions, rows)
        targets = captions[:, 1:]
        ce = nn.functional.cross_entropy(
            output.logits.reshape(-1, output.logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=0,
            reduction="sum",
        )
        total += float(ce)
        tokens += int((targets != 0).sum())
    return total / max(tokens, 1)


def hard_repeats(record: dict[str, Any], cfg: TrainConfig) -> int:
    """Images with many objects are the hard ones: draw them ``hard_repeat`` times per epoch."""
    return cfg.hard_repeat if len(record.get("objects", ())) >= cfg.hard_min_objects else 1


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _run_config(
    cfg: TrainConfig, vocab: Vocab, feature_meta: dict[str, Any], seed: int
) -> dict[str, Any]:
    return {
        "decoder": cfg.decoder,
        "train": to_dict(cfg),
        "seed": seed,
        "vocab_size": len(vocab),
        "encoder": {k: feature_meta[k] for k in ("encoder", "input_size", "grid", "channels")}
        # how to rebuild the encoder at prediction (caches from before the encoder zoo lack it)
        | {k: feature_meta[k] for k in ENCODER_IDENTITY if k in feature_meta},
    }


def _config_hash(run_config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(
    path: Path,
    run_config: dict[str, Any],
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    epoch: int,
    history: list[dict[str, float]],
) -> None:
    state = {
        "config_hash": _config_hash(run_config),
        "epoch": epoch,
        "model": decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "history": json.dumps(history),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _maybe_resume(
    path: Path,
    run_config: dict[str, Any],
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
) -> tuple[int, list[dict[str, float]]]:
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != _config_hash(run_config):
        logger.info("ignoring checkpoint %s: it was made with another config", path)
        return 0, []
    decoder.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    logger.info("resuming from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"]), json.loads(state["history"])


def _save_model(
    model_dir: Path,
    decoder: Decoder,
    vocab: Vocab,
    run_config: dict[str, Any],
    encoder: nn.Module | None = None,
) -> None:
    """decoder.safetensors, vocab.json, config.json (+ encoder.safetensors if it was trained)."""
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        modules = {"decoder.safetensors": decoder}
        if encoder is not None:
            modules[ENCODER_WEIGHTS_FILE] = encoder
        for name, module in modules.items():
            weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(weights, str(tmp / name))
        vocab.save(tmp / "vocab.json")
        write_json(tmp / "config.json", run_config)


def load_decoder(
    model_dir: str | Path, device: torch.device | None = None
) -> tuple[Decoder, Vocab, dict]:
    """Rebuild a trained decoder from its directory (safetensors: nothing is unpickled)."""
    from safetensors.torch import load_file

    from captioning.config import DecoderConfig, from_dict

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vocab = Vocab.load(model_dir / "vocab.json")
    decoder_cfg = from_dict(
        DecoderConfig,
        config["train"]["model"],
        path=model_dir / "config.json",
        prefix="train.model.",
    )
    grid_h, grid_w = grid_shape(config["encoder"])
    decoder = build_decoder(
        config["decoder"],
        decoder_cfg,
        vocab_size=len(vocab),
        feature_dim=config["encoder"]["channels"],
        num_locations=grid_h * grid_w,
    )
    decoder.load_state_dict(load_file(str(model_dir / "decoder.safetensors")))
    decoder.eval()
    if device is not None:
        decoder.to(device)
    return decoder, vocab, config
