"""Resume state of a training run: written after every epoch and every N optimiser steps.

One file, ``<checkpoint_dir>/last.pt``, outside the DVC outputs, replaced atomically. It holds
everything the next step depends on: the weights, optimiser, LR scheduler and GradScaler, every
rank's torch RNG states (CPU, and CUDA on a GPU) and the shared numpy one, the epoch's batch
order and the position in it, the running loss of the epoch, the history and the best-so-far
weights. A run resumed from it takes the steps the uninterrupted run would have taken: to the
same weights on the CPU; on CUDA only where both ran with deterministic algorithms
(``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``), as some
CUDA kernels (atomic adds in backward passes) sum in a different order each run.

Under DDP, rank 0 alone reads and writes it: the others get its payload by broadcast before the
model is wrapped, so the ranks need no shared checkpoint directory. A rank the checkpoint has
no RNG state for (resumed on more processes than it was saved from) derives its own from
(seed, rank, step). Loaded with ``torch.load(weights_only=True)``: only tensors, numbers and
strings (the rest is JSON), nothing unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from captioning.io import atomic_path
from captioning.training.batches import Draw
from captioning.training.distributed import DistContext, rank_seed
from captioning.training.validation import BestSoFar

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


@dataclass
class LoopState:
    """Where a training run is; everything in it goes into the checkpoint."""

    best: BestSoFar
    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken in the whole run
    position: int = 0  # batches of the current epoch done
    batches: list[list[Draw]] | None = None  # the current epoch's batch order (None: not drawn)
    loss_sum: float = 0.0  # the epoch's training loss so far, summed over captions
    loss_count: int = 0
    sample_prob_sum: float = 0.0  # scheduled sampling probability, summed over the epoch's steps
    stats_sum: dict[str, float] = field(default_factory=dict)  # StepLoss.stats, summed likewise
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    prior_seconds: float = 0.0  # training time of the sessions before this one (resumed runs)
    session_started: float = field(default_factory=time.monotonic)
    # loss_sum and the steps' losses since it was last read, on the device (float64): read
    # only when logged or saved, so that a step never waits for the GPU to finish the last.
    _running: torch.Tensor | None = field(default=None, repr=False)

    def seconds(self) -> float:
        """Training time of the whole run, across resumes."""
        return self.prior_seconds + time.monotonic() - self.session_started

    def start_epoch(self, batches: list[list[Draw]]) -> None:
        self.batches, self.position = batches, 0
        self.loss_sum, self.loss_count, self.sample_prob_sum = 0.0, 0, 0.0
        self.stats_sum = {}
        self._running = None

    def count_step(
        self,
        loss: torch.Tensor,
        captions: int,
        sample_prob: float,
        stats: dict[str, float] | None = None,
    ) -> None:
        """Book-keeping of one optimiser step: ``loss`` is the mean over its ``captions``. Adds
        in the order and precision a float sum would (the same history), without reading it."""
        self.step += 1
        self.position += 1
        weighted = loss.detach().double() * captions
        base = self.loss_sum if self._running is None else self._running
        self._running = weighted + base
        self.loss_count += captions
        self.sample_prob_sum += sample_prob
        for name, value in (stats or {}).items():
            self.stats_sum[name] = self.stats_sum.get(name, 0.0) + value

    def stats_means(self) -> dict[str, float]:
        """The epoch's mean of each step statistic so far."""
        return {name: total / max(self.position, 1) for name, total in self.stats_sum.items()}

    def train_loss(self) -> float:
        """The epoch's mean training loss so far (reads the device: a sync on a GPU)."""
        if self._running is not None:
            self.loss_sum, self._running = self._running.item(), None
        return self.loss_sum / max(self.loss_count, 1)

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.batches, self.position = None, 0

    def _json(self) -> str:
        self.train_loss()  # loss_sum up to date
        return json.dumps(
            {
                "epoch": self.epoch,
                "step": self.step,
                "position": self.position,
                "batches": self.batches,
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
                "sample_prob_sum": self.sample_prob_sum,
                "stats_sum": self.stats_sum,
                "history": self.history,
                "stopped_early": self.stopped_early,
                "seconds": self.seconds(),
            }
        )

    @classmethod
    def _from_json(cls, text: str, best: BestSoFar) -> LoopState:
        raw = json.loads(text)
        batches = raw["batches"]
        if batches is not None:
            batches = [[(int(row), tuple(picked)) for row, picked in batch] for batch in batches]
        return cls(
            best=best,
            epoch=raw["epoch"],
            step=raw["step"],
            position=raw["position"],
            batches=batches,
            loss_sum=raw["loss_sum"],
            loss_count=raw["loss_count"],
            sample_prob_sum=raw["sample_prob_sum"],
            stats_sum=raw.get("stats_sum", {}),
            history=raw["history"],
            stopped_early=raw["stopped_early"],
            prior_seconds=raw["seconds"],
        )


@dataclass
class Trainables:
    """What the optimiser updates and what it carries, saved and restored together."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rng: np.random.Generator


def config_hash(run_config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path, run_config: dict[str, Any], parts: Trainables, state: LoopState, ctx: DistContext
) -> None:
    """Write the checkpoint (rank 0), with every rank's RNG states: every rank calls it."""
    rank_rng = ctx.gather(rng_state(ctx.device))
    if not ctx.is_main:
        return
    payload = {
        "config_hash": config_hash(run_config),
        "loop": state._json(),
        "best": state.best.to_state(),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rank_rng": rank_rng,
        "numpy_rng": json.dumps(parts.rng.bit_generator.state),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def resume(
    path: Path,
    run_config: dict[str, Any],
    parts: Trainables,
    metric: str,
    ctx: DistContext,
    seed: int,
) -> LoopState:
    """The saved state if ``path`` was written by the same config (restoring ``parts``), else a
    fresh one. Every rank calls it; rank 0 reads the file and the others get its contents."""
    saved = ctx.from_main(_read(path, run_config) if ctx.is_main else None)
    if saved is None:
        return LoopState(best=BestSoFar(metric))
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"] or not parts.scaler.is_enabled():
        parts.scaler.load_state_dict(saved["scaler"])
    else:  # saved by a run without loss scaling (fp32, bf16): this one starts its scale afresh
        logger.info("the checkpoint has no GradScaler state: loss scaling starts afresh")
    parts.rng.bit_generator.state = json.loads(saved["numpy_rng"])
    state = LoopState._from_json(saved["loop"], BestSoFar.from_state(saved["best"]))
    restore_rng_state(saved["rank_rng"], ctx, seed, state.step)
    if ctx.is_main:
        logger.info(
            "resuming from %s: epoch %d, step %d (%d batches into the epoch)",
            path,
            state.epoch + 1,
            state.step,
            state.position,
        )
    return state


def _read(path: Path, run_config: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("config_hash") != config_hash(run_config) or "rank_rng" not in saved:
        logger.info("ignoring checkpoint %s: it was made with another config or version", path)
        return None
    return saved


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's torch RNG states: the CPU's, and its GPU's where it trains on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(
    saved: list[dict[str, torch.Tensor]], ctx: DistContext, seed: int, step: int
) -> None:
    """This rank's saved RNG states; derived from (seed, rank, step) where none were saved for
    it (more ranks than the run had, or a CPU run resumed on a GPU)."""
    mine = saved[ctx.rank] if ctx.rank < len(saved) else {}
    on_gpu = ctx.device.type == "cuda"
    if "cpu" in mine and ("cuda" in mine or not on_gpu):
        torch.set_rng_state(mine["cpu"])
        if on_gpu:
            torch.cuda.set_rng_state(mine["cuda"], ctx.device)
        return
    torch.manual_seed(rank_seed(seed, ctx.rank, step))  # the CPU's and every GPU's
    logger.info(
        "rank %d: no saved random state for it (saved by %d ranks%s): seeded from "
        "(seed, rank, step)",
        ctx.rank,
        len(saved),
        ", without a GPU" if mine else "",
    )
