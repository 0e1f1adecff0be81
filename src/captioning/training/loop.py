"""Training of a registered decoder on cached features.

Teacher forcing, or scheduled sampling (``train.scheduled_sampling``) over the optimiser steps;
cross-entropy over real tokens only; AdamW with warmup + cosine LR, gradient clipping and, on
CUDA, autocast with loss scaling under fp16. After each epoch the validation loss, and every
``train.early_stopping.every_epochs`` epochs greedy captions of the val split scored with the
fast BLEU/CIDEr-D: the saved model is the best epoch's, and training stops after ``patience``
validations without improvement.

Resumable (``training.checkpoint``): a checkpoint after every epoch and every
``train.checkpoint_every_steps`` steps, outside the DVC outputs; a re-run with the same config
continues from it, mid-epoch included, to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from captioning.config import TrainConfig, to_dict
from captioning.data.vocab import Vocab
from captioning.devices import autocast, pin_memory
from captioning.features.cache import FeatureCache
from captioning.features.encoders import grid_shape
from captioning.features.encoding import ENCODER_IDENTITY, ENCODER_WEIGHTS_FILE
from captioning.io import atomic_path, write_json
from captioning.models import Decoder, build_decoder
from captioning.training.batches import (
    CaptionSet,
    Draw,
    collate,
    iterate_batches,
    length_grouped_batches,
)
from captioning.training.checkpoint import (
    CHECKPOINT_FILE,
    LoopState,
    Trainables,
    resume,
    save_checkpoint,
)
from captioning.training.distributed import DistContext, init_distributed
from captioning.training.schedules import sampling_probability, warmup_cosine
from captioning.training.validation import Validator

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
# Called after every optimiser step with the run's step count and {loss, sample_prob, lr}.
StepCallback = Callable[[int, dict[str, float]], None]
Save = Callable[[], None]

# Fields of TrainConfig that do not change the weights: kept out of the resume hash and the
# model's config.json (adding a decoder to the DAG must not restart the others).
_NOT_IN_RUN_CONFIG = ("decoders", "checkpoint_every_steps", "log_every_steps")


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    parameters: int
    best: dict[str, Any] = field(default_factory=dict)  # metric, value, epoch
    stopped_early: bool = False

    def summary(self, decoder: str) -> dict[str, Any]:
        """What the comparison reads: size, time, best epoch."""
        return {
            "decoder": decoder,
            "parameters": self.parameters,
            "train_seconds": round(self.seconds, 1),
            "epochs_run": len(self.history),
            "best_epoch": self.best.get("epoch", 0),
            f"best_val_{self.best.get('metric', 'metric')}": self.best.get("value"),
            "stopped_early": self.stopped_early,
        }


def train_decoder(
    features_dir: str | Path,
    vocab_path: str | Path,
    model_dir: str | Path,
    cfg: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train ``cfg.decoder`` and write decoder.safetensors, vocab.json and config.json."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed()  # one rank of a torchrun launch, or the only process
    device = ctx.device
    vocab = Vocab.load(vocab_path)
    train_cache = FeatureCache.open(features_dir, "train")
    val_cache = FeatureCache.open(features_dir, "val")
    train_x = torch.from_numpy(train_cache.load_in_memory())  # (N, L, C) float16
    val_x = torch.from_numpy(val_cache.load_in_memory())
    if pin_memory(device):
        train_x = train_x.pin_memory()  # batches copy to the GPU asynchronously
    train_set = CaptionSet.build(
        train_cache.captions, vocab, [hard_repeats(m, cfg) for m in train_cache.row_meta]
    )
    val_set = CaptionSet.build(val_cache.captions, vocab)
    validator = Validator.for_split(
        val_cache, vocab, cfg.early_stopping, f"the val split of {features_dir}"
    )

    torch.manual_seed(seed)
    num_locations, feature_dim = train_x.shape[1], train_x.shape[2]
    decoder = build_decoder(
        cfg.decoder,
        cfg.model,
        vocab_size=len(vocab),
        feature_dim=feature_dim,
        num_locations=num_locations,
    ).to(device)
    model = ctx.wrap(decoder)  # DDP under torchrun (the same parameters); the decoder otherwise
    parameters = sum(p.numel() for p in decoder.parameters())
    logger.info("%s decoder: %.2f M parameters on %s", cfg.decoder, parameters / 1e6, device)

    images_per_batch = max(1, cfg.batch_size // cfg.seq_per_image)
    steps_per_epoch = math.ceil(int(train_set.weights.sum()) / images_per_batch)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    )
    parts = Trainables(
        decoder, optimizer, scheduler, grad_scaler(device), np.random.default_rng(seed)
    )
    run_config = _run_config(cfg, vocab, train_cache.meta, seed)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
    state = resume(checkpoint, run_config, parts, cfg.early_stopping.metric)

    def save() -> None:
        if ctx.is_main:  # one writer; every rank resumes from the same file
            save_checkpoint(checkpoint, run_config, parts, state)

    while state.epoch < cfg.epochs and not state.stopped_early:
        if state.batches is None:
            batches = _draw_batches(train_set, cfg, images_per_batch, parts.rng)
            state.start_epoch(ctx.merge_small_batches(batches))  # global batches, every rank
        _train_epoch(model, train_x, train_set, state, parts, cfg, device, save, on_step, ctx)
        if ctx.is_main:  # rank 0 validates; the others wait, then follow its stopping decision
            record = close_epoch(
                state, cfg, parts, decoder, val_x, val_set, validator, images_per_batch, device
            )
        else:
            state.finish_epoch()
        state.stopped_early = ctx.agree(state.stopped_early)
        save()
        if on_epoch is not None and ctx.is_main:
            on_epoch(state.epoch, record)

    result = finish(state, decoder, parameters)
    if ctx.is_main:
        _save_model(
            Path(model_dir),
            decoder,
            vocab,
            {**run_config, "training": result.summary(cfg.decoder)},
        )
        checkpoint.unlink(missing_ok=True)
    ctx.barrier()
    return result


def _draw_batches(
    train_set: CaptionSet, cfg: TrainConfig, images_per_batch: int, rng: np.random.Generator
) -> list[list[Draw]]:
    """The epoch's batches: its draws grouped by caption length, in random order."""
    draws = train_set.epoch_draws(rng, cfg.seq_per_image)
    lengths = [train_set.draw_length(d) for d in draws]
    return [
        [draws[i] for i in batch]
        for batch in length_grouped_batches(lengths, images_per_batch, rng)
    ]


def _train_epoch(
    decoder: nn.Module,
    features: torch.Tensor,
    caption_set: CaptionSet,
    state: LoopState,
    parts: Trainables,
    cfg: TrainConfig,
    device: torch.device,
    save: Save,
    on_step: StepCallback | None,
    ctx: DistContext,
) -> None:
    """The rest of the epoch's batches, from ``state.position``; under DDP this rank's part of
    each."""
    decoder.train()
    batches = state.batches
    assert batches is not None
    progress = tqdm(
        range(state.position, len(batches)),
        initial=state.position,
        total=len(batches),
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        unit="batch",
        mininterval=5.0,
        disable=not ctx.is_main,
    )
    for index in progress:
        x, captions, rows = collate(features, caption_set, ctx.shard(batches[index]), pad_id=0)
        x = x.to(device, non_blocking=True)
        captions = captions.to(device, non_blocking=True)
        rows = rows.to(device, non_blocking=True)

        loss_of = (
            partial(_rank_share_loss, decoder, x, captions, rows, ctx)
            if ctx.enabled
            else partial(_batch_loss, decoder, x, captions, rows)
        )
        take_step(loss_of, decoder.parameters(), parts, cfg, state, device, save, on_step)
        progress.set_postfix(loss=f"{state.loss_sum / state.loss_count:.3f}", refresh=False)


def _batch_loss(
    decoder: Decoder,
    x: torch.Tensor,
    captions: torch.Tensor,
    rows: torch.Tensor,
    sample_prob: float,
) -> tuple[torch.Tensor, int]:
    return caption_loss(decoder, x, captions, rows, sample_prob=sample_prob), captions.size(0)


def _rank_share_loss(
    model: nn.Module,
    x: torch.Tensor,
    captions: torch.Tensor,
    rows: torch.Tensor,
    ctx: DistContext,
    sample_prob: float,
) -> tuple[torch.Tensor, int]:
    """This rank's share of the global batch's ``caption_loss``, times ``world`` (DDP averages
    the gradients): summed over the ranks it is the single-process loss of the whole batch. The
    regulariser is a mean over captions in every decoder, so it is weighted by the rank's share
    of the captions. (Logged per rank it is close to the batch's mean loss: the shares are
    about 1/world each.)"""
    output = model(x, captions, rows, sample_prob=sample_prob)
    targets = captions[:, 1:]
    ce_sum = nn.functional.cross_entropy(
        output.logits.reshape(-1, output.logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=0,
        reduction="sum",
    )
    tokens = ctx.total(float((targets != 0).sum()))
    share = captions.size(0) / ctx.total(float(captions.size(0)))
    loss = ctx.world * (ce_sum / max(tokens, 1.0) + output.aux_loss * share)
    return loss, captions.size(0)


def take_step(
    loss_of: Callable[[float], tuple[torch.Tensor, int]],
    parameters: Iterable[nn.Parameter],
    parts: Trainables,
    cfg: TrainConfig,
    state: LoopState,
    device: torch.device,
    save: Save | None,
    on_step: StepCallback | None,
) -> None:
    """One optimiser step at the schedule's sampling probability; book-keeping; a checkpoint
    every ``checkpoint_every_steps`` (``save`` None: the caller cannot resume mid-epoch)."""
    sample_prob = sampling_probability(cfg.scheduled_sampling, state.step)
    with autocast(device):
        loss, captions = loss_of(sample_prob)
    optimizer_step(loss, parameters, parts.optimizer, parts.scheduler, parts.scaler, cfg.grad_clip)
    value = loss.item()
    state.step += 1
    state.position += 1
    state.loss_sum += value * captions
    state.loss_count += captions
    state.sample_prob_sum += sample_prob
    if (
        save is not None
        and cfg.checkpoint_every_steps
        and state.step % cfg.checkpoint_every_steps == 0
    ):
        save()
    if on_step is not None:
        lr = parts.scheduler.get_last_lr()[0]
        on_step(state.step, {"loss": value, "sample_prob": sample_prob, "lr": lr})


def close_epoch(
    state: LoopState,
    cfg: TrainConfig,
    parts: Trainables,
    decoder: Decoder,
    val_features: torch.Tensor,
    val_set: CaptionSet,
    validator: Validator,
    images_per_batch: int,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss, and every ``every_epochs`` (and at the last epoch) the greedy val
    captions' scores; the best-so-far weights of ``parts.model``; early stopping. Returns the
    epoch's record."""
    epoch = state.epoch
    train_loss = state.loss_sum / max(state.loss_count, 1)
    extra = {"sample_prob": state.sample_prob_sum / max(state.position, 1)}
    val_loss = evaluate_loss(decoder, val_features, val_set, images_per_batch, device)
    stopping = cfg.early_stopping
    if (epoch + 1) % stopping.every_epochs == 0 or epoch + 1 == cfg.epochs:
        scores = validator.scores(decoder, val_features)
        extra.update(scores)
        if state.best.update(epoch + 1, scores, parts.model):
            logger.info("best so far: val %s %.4f", stopping.metric, state.best.value)
        elif state.best.should_stop(stopping):
            state.stopped_early = True
            logger.info(
                "early stop after epoch %d: val %s has not improved for %d validations "
                "(best %.4f at epoch %d)",
                epoch + 1,
                stopping.metric,
                state.best.since_best,
                state.best.value,
                state.best.epoch,
            )
    record = _epoch_record(epoch, cfg, train_loss, val_loss, parts.scheduler, state.history, extra)
    state.finish_epoch()
    return record


def _epoch_record(
    epoch: int,
    cfg: TrainConfig,
    train_loss: float,
    val_loss: float,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, float]],
    extra: dict[str, float] | None = None,
) -> dict[str, float]:
    """The epoch's line of the history (appended) and of the log: losses, LR, and ``extra``
    (the mean scheduled-sampling probability, validation scores)."""
    record = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": scheduler.get_last_lr()[0],
        **(extra or {}),
    }
    history.append(record)
    shown = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "lr"))
    logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs, shown)
    return record


def finish(state: LoopState, model: nn.Module, trained: int) -> TrainResult:
    """Put the best validated weights back into ``model``; the run's result."""
    if state.best.weights:
        model.load_state_dict(state.best.weights)
        logger.info(
            "keeping epoch %d (val %s %.4f)", state.best.epoch, state.best.metric, state.best.value
        )
    return TrainResult(
        state.history,
        state.seconds(),
        trained,
        best=state.best.summary(),
        stopped_early=state.stopped_early,
    )


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling where autocast runs in float16 (CUDA without bf16); bf16 has fp32's range
    and needs none, and the CPU trains in fp32."""
    float16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler(device.type, enabled=float16)


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
    *,
    sample_prob: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over real tokens only (padding masked) plus the decoder's regulariser;
    ``sample_prob`` > 0 feeds the decoder's own samples (scheduled sampling)."""
    output = decoder(features, captions, rows, sample_prob=sample_prob)
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


def train_record(cfg: TrainConfig) -> dict[str, Any]:
    """The train config as the model and the resume hash record it."""
    return {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_RUN_CONFIG}


def _run_config(
    cfg: TrainConfig, vocab: Vocab, feature_meta: dict[str, Any], seed: int
) -> dict[str, Any]:
    return {
        "decoder": cfg.decoder,
        "train": train_record(cfg),
        "seed": seed,
        "vocab_size": len(vocab),
        "encoder": {k: feature_meta[k] for k in ("encoder", "input_size", "grid", "channels")}
        # how to rebuild the encoder at prediction (caches from before the encoder zoo lack it)
        | {k: feature_meta[k] for k in ENCODER_IDENTITY if k in feature_meta},
    }


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

    from captioning.config import saved_decoder_config

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vocab = Vocab.load(model_dir / "vocab.json")
    decoder_cfg = saved_decoder_config(config["train"]["model"], path=model_dir / "config.json")
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
