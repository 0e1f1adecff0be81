"""The training loop: one decoder, batches from a source, an objective to minimise.

The source (training/sources.py) gives cached features, or images through an encoder trained
with the decoder (training/fine_tune.py); the objective (training/objectives.py) is
teacher-forced cross-entropy with optional scheduled sampling (``train.scheduled_sampling``), or
self-critical training's (training/self_critical.py, a second phase from a trained model).
AdamW with warmup + cosine LR (the encoder's blocks at their own LR), gradient clipping and, on
``common.precision``: autocast in bf16 or fp16 (loss scaled) with fp32 weights and loss, or
plain fp32; data-parallel under torchrun
(training/distributed.py). After each epoch the validation loss, and every
``train.early_stopping.every_epochs`` epochs greedy captions of the val split scored with the
fast BLEU/CIDEr-D: the saved model is the best epoch's, and training stops after ``patience``
validations without improvement, or before an epoch that would end past ``train.max_minutes``.

Resumable (``training.checkpoint``): a checkpoint after every epoch and, where the source stores
its batch order, every ``train.checkpoint_every_steps`` steps or ``train.checkpoint_every_minutes``
minutes, whichever comes first, outside the DVC outputs; a re-run with the same config continues
from it, mid-epoch included, to the same weights as an uninterrupted run (on CUDA: with
deterministic algorithms, see training/checkpoint.py).

No step reads a tensor back to the host (which would wait for the GPU to finish it, so that the
next batch is never queued ahead): the running loss stays on the device, read every
``train.log_every_steps`` steps, when ``on_step`` is called, and at checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from captioning.config import EXECUTION_SETTINGS, TrainConfig, to_dict
from captioning.data.vocab import Vocab
from captioning.devices import autocast, resolve_precision
from captioning.models import Decoder, build_decoder
from captioning.models.saved import save_model
from captioning.training.batches import images_per_batch
from captioning.training.checkpoint import (
    CHECKPOINT_FILE,
    LoopState,
    Trainables,
    resume,
    save_checkpoint,
)
from captioning.training.distributed import (
    DistContext,
    init_distributed,
    leaves_process_group,
    seed_rank_stream,
)
from captioning.training.objectives import Objective, objective_for
from captioning.training.schedules import warmup_cosine
from captioning.training.sources import BatchSource
from captioning.training.validation import ValSplit

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
# Called every train.log_every_steps optimiser steps with the run's step count and
# {loss, sample_prob, lr} (the step's loss: reading it waits for the GPU).
StepCallback = Callable[[int, dict[str, float]], None]

# Fields of TrainConfig that do not change the weights: kept out of the resume hash and the
# model's config.json (adding a decoder to the DAG must not restart the others), with the
# train section's execution settings.
_NOT_IN_RUN_CONFIG = (
    "decoders",
    *(key.removeprefix("train.") for key in EXECUTION_SETTINGS if key.startswith("train.")),
)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    parameters: int
    best: dict[str, Any] = field(default_factory=dict)  # metric, value, epoch
    stopped_early: bool = False
    precision: str = "fp32"  # what the steps computed in (resolved common.precision)

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


@leaves_process_group
def train_decoder(
    decoder_name: str,
    source: BatchSource,
    vocab_path: str | Path,
    model_dir: str | Path,
    cfg: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    objective: Objective | None = None,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    precision: str = "auto",
    device_setting: str = "auto",
    init_weights: dict[str, torch.Tensor] | None = None,
    run_record: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the decoder ``decoder_name`` on ``source``'s batches, minimising ``objective``
    (default: teacher forcing), the steps and validation computing in ``precision``
    (``common.precision``, resolved on the device: recorded in the model's config.json and
    ``TrainResult.precision``); write the best epoch's model (models/saved.py).

    ``init_weights``: the decoder's starting weights (a second phase, such as self-critical
    training, from a trained model) instead of the seeded initialisation; ``run_record``: what
    else the weights are a function of (that phase's settings, the start's identity), in the
    resume hash and the model's config.json."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed(device_setting)  # one rank of a torchrun launch, or the only process
    device = ctx.device
    precision = resolve_precision(precision, device)
    vocab = Vocab.load(vocab_path)

    torch.manual_seed(seed)  # the initial weights: the encoder's if it is trained, the decoder's
    source.open(vocab, cfg, ctx, seed)
    decoder = build_decoder(
        decoder_name,
        cfg.model,
        vocab_size=len(vocab),
        feature_dim=source.feature_dim,
        num_locations=source.num_locations,
    ).to(device)
    if init_weights is not None:
        decoder.load_state_dict(init_weights)
    objective = objective or objective_for(decoder, cfg.scheduled_sampling)
    model = source.trained_model(decoder)  # what checkpoints hold
    seed_rank_stream(seed, ctx)  # the same weights everywhere; each rank's own dropout from here
    trained = [p for p in model.parameters() if p.requires_grad]
    parameters = sum(p.numel() for p in trained)
    logger.info(
        "%s decoder: %.2f M trained parameters on %s in %s",
        decoder_name,
        parameters / 1e6,
        device,
        precision,
    )

    batch_images = images_per_batch(cfg)
    steps_per_epoch = math.ceil(source.images_per_epoch / batch_images)
    optimizer = adamw(
        [{"params": list(decoder.parameters()), "lr": cfg.lr}, *source.param_groups()],
        cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    )
    parts = Trainables(
        model, optimizer, scheduler, grad_scaler(device, precision), np.random.default_rng(seed)
    )
    run_config = _run_config(decoder_name, cfg, vocab, seed, source.encoder_record, precision)
    run_config |= run_record or {}
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
    # Rank 0's checkpoint on every rank, loaded before DDP wraps the model.
    state = resume(checkpoint, run_config, parts, cfg.early_stopping.metric, ctx, seed)
    if state.batches is not None:  # saved by another number of ranks: each needs a share
        state.batches[state.position :] = ctx.merge_small_batches(state.batches[state.position :])
    forward = ctx.wrap(decoder)  # DDP under torchrun (the same parameters); the decoder otherwise
    schedule = CheckpointSchedule(cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes)

    def save() -> None:  # every rank (their RNG states); rank 0 writes
        save_checkpoint(checkpoint, run_config, parts, state, ctx)
        schedule.saved()

    started = time.monotonic()  # train.max_minutes counts from here (this invocation)
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch_started = time.monotonic()
        if state.batches is None:  # a new epoch; a resumed one goes on in its stored order
            state.start_epoch(source.new_epoch(state.epoch, parts.rng))
        source.train_mode(decoder)
        progress = tqdm(
            source.batches(state, parts.rng),
            initial=state.position,
            total=len(state.batches) or None,
            desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
            unit="batch",
            mininterval=5.0,
            disable=not ctx.is_main,
        )
        for batch in progress:
            with autocast(device, precision):
                step = objective(forward, batch, state.step, ctx)
            optimizer_step(step.loss, trained, optimizer, scheduler, parts.scaler, cfg.grad_clip)
            state.count_step(step.loss, step.captions, step.sample_prob, step.stats)
            logged = state.step % cfg.log_every_steps == 0
            if source.resumes_mid_epoch and schedule.due(state.step, ctx, logged):
                save()
            if not logged:
                continue
            if ctx.is_main:
                progress.set_postfix(loss=f"{state.train_loss():.3f}", refresh=False)
            if on_step is not None:
                lr = scheduler.get_last_lr()[0]
                report = {"loss": step.loss.item(), "sample_prob": step.sample_prob, "lr": lr}
                report |= step.stats
                on_step(state.step, report)

        if ctx.is_main:  # rank 0 validates; the others wait, then follow its stopping decision
            val = source.validation(precision)
            with autocast(device, precision):
                record = close_epoch(state, cfg, parts, decoder, val, device)
        else:
            state.finish_epoch()
        state.stopped_early = ctx.agree(state.stopped_early)
        save()
        if on_epoch is not None and ctx.is_main:
            on_epoch(state.epoch, record)
        if ctx.agree(out_of_time(started, time.monotonic() - epoch_started, cfg.max_minutes)):
            logger.info("stopping after epoch %d: the next would end past the budget", state.epoch)
            break

    result = finish(state, model, parameters, precision)
    if ctx.is_main:
        encoder_record, encoder = source.saved_encoder()
        final = {**run_config, "encoder": encoder_record, "training": result.summary(decoder_name)}
        save_model(model_dir, decoder, vocab, final, encoder=encoder)
        checkpoint.unlink(missing_ok=True)
    ctx.barrier()
    return result


# What wall-clock checkpoints read (a test sets a fake one).
clock = time.monotonic


@dataclass
class CheckpointSchedule:
    """Step checkpoints every ``every_steps`` steps or ``every_minutes`` minutes, whichever
    comes first (0: never by that measure). Under DDP the ranks' clocks may disagree: they go
    by rank 0's, asked only at logged steps (a collective; a sync on a GPU)."""

    every_steps: int
    every_minutes: float
    last: float = field(default_factory=lambda: clock())  # the module's clock when built

    def due(self, step: int, ctx: DistContext, logged: bool) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        if not self.every_minutes or (ctx.enabled and not logged):
            return False
        return ctx.agree(clock() - self.last >= self.every_minutes * 60)

    def saved(self) -> None:
        self.last = clock()


def close_epoch(
    state: LoopState,
    cfg: TrainConfig,
    parts: Trainables,
    decoder: Decoder,
    val: ValSplit,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss, and every ``every_epochs`` (and at the last epoch) the greedy val
    captions' scores; the best-so-far weights of ``parts.model``; early stopping. Returns the
    epoch's record."""
    epoch = state.epoch
    train_loss = state.train_loss()
    extra = {"sample_prob": state.sample_prob_sum / max(state.position, 1)}
    extra |= state.stats_means()
    val_loss = val.loss(decoder, images_per_batch(cfg), device)
    stopping = cfg.early_stopping
    if (epoch + 1) % stopping.every_epochs == 0 or epoch + 1 == cfg.epochs:
        scores = val.validator.scores(decoder, val.features)
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


def finish(state: LoopState, model: nn.Module, trained: int, precision: str) -> TrainResult:
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
        precision=precision,
    )


def out_of_time(started: float, epoch_seconds: float, max_minutes: float) -> bool:
    """True if another epoch as long as the last would end past ``max_minutes`` (0: never)."""
    if max_minutes <= 0:
        return False
    return time.monotonic() - started + epoch_seconds > max_minutes * 60


def adamw(groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.AdamW:
    """The run's optimiser. fused: one kernel over every parameter; on the CPU torch's default
    is a Python loop of ~10 ops per tensor (6% of a seed-dims step, docs/performance.md);
    the weights agree with it to ~1e-7 a step."""
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling exactly where autocast runs in float16 (the resolved ``precision``): bf16
    has fp32's range and needs none, nor does fp32."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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


def train_record(cfg: TrainConfig) -> dict[str, Any]:
    """The train config as the model and the resume hash record it."""
    return {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_RUN_CONFIG}


def _run_config(
    decoder_name: str,
    cfg: TrainConfig,
    vocab: Vocab,
    seed: int,
    encoder: dict[str, Any],
    precision: str,
) -> dict[str, Any]:
    """What the weights are a function of: the resume hash, and the model's config.json.
    ``precision`` is what training computed in; decoding may use another (a runtime choice)."""
    return {
        "decoder": decoder_name,
        "train": train_record(cfg),
        "seed": seed,
        "precision": precision,
        "vocab_size": len(vocab),
        "encoder": encoder,
    }
