"""Resume state of a training run: written after every epoch and every N optimiser steps.

One file, ``<checkpoint_dir>/last.pt``, outside the DVC outputs, replaced atomically. It holds
everything the next step depends on: the weights, optimiser, LR scheduler and GradScaler, the
torch and numpy RNG states, the epoch's batch order and the position in it, the running loss
of the epoch, the history and the best-so-far weights. A run resumed from it takes exactly the
steps the uninterrupted run would have taken. Loaded with ``torch.load(weights_only=True)``:
only tensors, numbers and strings (the rest is JSON), nothing unpickled.
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
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    prior_seconds: float = 0.0  # training time of the sessions before this one (resumed runs)
    session_started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        """Training time of the whole run, across resumes."""
        return self.prior_seconds + time.monotonic() - self.session_started

    def start_epoch(self, batches: list[list[Draw]]) -> None:
        self.batches, self.position = batches, 0
        self.loss_sum, self.loss_count, self.sample_prob_sum = 0.0, 0, 0.0

    def count_step(self, loss: float, captions: int, sample_prob: float) -> None:
        """Book-keeping of one optimiser step: ``loss`` is the mean over its ``captions``."""
        self.step += 1
        self.position += 1
        self.loss_sum += loss * captions
        self.loss_count += captions
        self.sample_prob_sum += sample_prob

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.batches, self.position = None, 0

    def _json(self) -> str:
        return json.dumps(
            {
                "epoch": self.epoch,
                "step": self.step,
                "position": self.position,
                "batches": self.batches,
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
                "sample_prob_sum": self.sample_prob_sum,
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
    path: Path, run_config: dict[str, Any], parts: Trainables, state: LoopState
) -> None:
    payload = {
        "config_hash": config_hash(run_config),
        "loop": state._json(),
        "best": state.best.to_state(),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(parts.rng.bit_generator.state),
    }
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def resume(path: Path, run_config: dict[str, Any], parts: Trainables, metric: str) -> LoopState:
    """The saved state if ``path`` was written by the same config (restoring ``parts``), else a
    fresh one."""
    fresh = LoopState(best=BestSoFar(metric))
    if not path.is_file():
        return fresh
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("config_hash") != config_hash(run_config) or "loop" not in saved:
        logger.info("ignoring checkpoint %s: it was made with another config", path)
        return fresh
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    parts.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    parts.rng.bit_generator.state = json.loads(saved["numpy_rng"])
    state = LoopState._from_json(saved["loop"], BestSoFar.from_state(saved["best"]))
    logger.info(
        "resuming from %s: epoch %d, step %d (%d batches into the epoch)",
        path,
        state.epoch + 1,
        state.step,
        state.position,
    )
    return state
