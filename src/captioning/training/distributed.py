"""Data-parallel training with torchrun (DDP): one process per device, each global batch split
over the ranks, gradients averaged so that a step equals the single-process step.

Every rank draws the same epoch order from the same seed, then takes every ``world``-th draw of
each global batch (interleaved, so the ranks get captions of similar lengths). The loss of a
rank is its share of the global batch's loss: the cross-entropy summed over its tokens divided
by the global token count, and the decoder's regulariser weighted by its share of the captions,
both times ``world`` because DDP averages the ranks' gradients. The summed gradient is then the
single-process gradient of the same global batch, up to float summation order. What still
differs: BatchNorm statistics are per rank on the CPU (``SyncBatchNorm`` is used on CUDA) and
dropout masks come from each rank's own RNG stream. Rank 0 alone writes checkpoints, the model,
logs and MLflow records; the others wait at a barrier.

Launch: ``train.devices: N`` makes the train stage re-run itself under
``torchrun --standalone --nproc_per_node N`` (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from captioning.config import ConfigError
from captioning.devices import choose_device

T = TypeVar("T")


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

    def total(self, value: float) -> float:
        """Sum of ``value`` over the ranks (e.g. the global batch's token count)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group at the end of a run (NCCL warns of pending work if a
        process exits without)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

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
