"""Data-parallel training with torchrun (DDP): one process per device, each global batch split
over the ranks, gradients averaged so that a step equals the single-process step.

Every rank draws the same epoch order from the same seed, then takes every ``world``-th draw of
each global batch (interleaved, so the ranks get captions of similar lengths). The loss of a
rank is its share of the global batch's loss: the cross-entropy summed over its tokens divided
by the global token count, and the decoder's regulariser weighted by its share of the captions,
both times ``world`` because DDP averages the ranks' gradients. The summed gradient is then the
single-process gradient of the same global batch, up to float summation order. What still
differs: BatchNorm statistics are per rank on the CPU (``SyncBatchNorm`` is used on CUDA) and
the torch random streams are per rank (``seed_rank_stream``): every rank builds the same initial
weights from ``seed``, then draws its own dropout masks, scheduled-sampling words and hard
attention samples. Rank 0 alone reads and writes checkpoints (the others get its payload by
broadcast), the model, logs and MLflow records; the others wait at a barrier.

Launch: ``train.devices: N`` makes the train stage re-run itself under
``torchrun --standalone --nproc_per_node N`` (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from captioning.config import ConfigError
from captioning.devices import choose_device

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's part of a global batch (every ``world``-th item)."""
        return list(items[self.rank :: self.world]) if self.enabled else list(items)

    def merge_small_batches(self, batches: Sequence[Sequence[T]]) -> list[list[T]]:
        """The global batches, each big enough for every rank to take part in every step: a
        batch smaller than ``world`` (the odd last one) joins the batch before it."""
        if not self.enabled:
            return [list(b) for b in batches]
        merged: list[list[T]] = []
        for batch in batches:
            if len(batch) < self.world and merged:
                merged[-1].extend(batch)
            else:
                merged.append(list(batch))
        if merged and len(merged[-1]) < self.world:
            raise ValueError(f"a batch of {len(merged[-1])} for {self.world} ranks")
        return merged

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. whether to stop early)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([int(flag)], device=self._comm_device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return nn.parallel.DistributedDataParallel(model)

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over the ranks (e.g. the global batch's token count), on the
        device and never read back to the host: no wait for the GPU."""
        if not self.enabled:
            return tensor
        summed = tensor.detach().to(self._comm_device, copy=True)
        dist.all_reduce(summed)
        return summed.to(tensor.device)

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` (picklable) on every rank; the other ranks' are ignored."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def check_device_setting(setting: str, world: int) -> torch.device:
    """``common.device`` for ``world`` processes, chosen (``choose_device``: CUDA there if
    demanded); no ``cuda:N`` for more than one (under torchrun each rank takes
    ``cuda:LOCAL_RANK``)."""
    if world > 1 and setting.startswith("cuda:"):
        raise ConfigError(
            f"common.device: {setting!r} names one GPU but train.devices runs {world} processes, "
            "one per GPU (cuda:LOCAL_RANK); use cuda or auto"
        )
    return choose_device(setting)


def leaves_process_group(run: Callable[P, R]) -> Callable[P, R]:
    """``run``, leaving the process group however it ends: NCCL warns of pending work if a
    process exits without, and a failed rank's peers then fail instead of waiting for it."""

    @functools.wraps(run)
    def leaving(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return run(*args, **kwargs)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    return leaving


def rank_seed(*key: int) -> int:
    """A 63-bit seed drawn from ``key`` (e.g. (seed, rank)): distinct keys, unrelated seeds."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def seed_rank_stream(seed: int, ctx: DistContext) -> None:
    """Give this rank its own torch stream (CPU and CUDA), once the initial weights are drawn:
    rank 0 goes on with the stream ``seed`` started (a single process trains as it always
    did), rank r > 0 restarts from (seed, r)."""
    if ctx.rank > 0:
        torch.manual_seed(rank_seed(seed, ctx.rank))


def init_distributed(setting: str = "auto") -> DistContext:
    """The process group of a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK set), else a
    single-process context, on the device ``setting`` (``common.device``) chooses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, choose_device(setting))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if check_device_setting(setting, world).type == "cuda":
        device, backend = choose_device(f"cuda:{local_rank}"), "nccl"  # the current device too
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank, world, device)
