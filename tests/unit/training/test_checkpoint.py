"""The checkpoint file alone: GradScaler states across precisions, and each rank's random
stream when the run resumes on more processes than saved it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from captioning.training.checkpoint import (
    LoopState,
    Trainables,
    restore_rng_state,
    resume,
    rng_state,
    save_checkpoint,
)
from captioning.training.distributed import DistContext
from captioning.training.validation import BestSoFar

CPU = torch.device("cpu")
ONE = DistContext(0, 1, CPU)
RUN = {"decoder": "linear", "seed": 3}


def parts(scaling: bool) -> Trainables:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaling)
    return Trainables(model, optimizer, scheduler, scaler, np.random.default_rng(3))


def test_a_checkpoint_without_loss_scaling_resumes_where_scaling_is_on(tmp_path, caplog):
    path = tmp_path / "last.pt"
    unscaled = parts(scaling=False)
    assert unscaled.scaler.state_dict() == {}  # what fp32 and bf16 runs save
    save_checkpoint(path, RUN, unscaled, LoopState(best=BestSoFar("CIDEr"), step=5), ONE)
    scaled = parts(scaling=True)
    with pytest.raises(RuntimeError, match="empty"):  # what loading it as it is would do
        scaled.scaler.load_state_dict({})
    with caplog.at_level(logging.INFO):
        state = resume(path, RUN, scaled, "CIDEr", ONE, seed=3)
    assert state.step == 5
    assert "no GradScaler state" in caplog.text
    assert scaled.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # afresh


def test_a_scaled_checkpoint_restores_its_scale(tmp_path):
    path = tmp_path / "last.pt"
    saved = parts(scaling=True)
    saved.scaler.scale(torch.ones(()))  # the scale exists once a loss was scaled
    saved.scaler.update(new_scale=1024.0)
    save_checkpoint(path, RUN, saved, LoopState(best=BestSoFar("CIDEr")), ONE)
    resumed = parts(scaling=True)
    resume(path, RUN, resumed, "CIDEr", ONE, seed=3)
    assert resumed.scaler.get_scale() == 1024.0


def draws() -> list[float]:
    return torch.rand(4).tolist()


def test_a_rank_without_a_saved_state_derives_its_own(caplog):
    """Saved by 2 ranks, resumed on 3: ranks 0 and 1 restore theirs, rank 2 gets a stream of
    its own from (seed, rank, step), the same each time."""
    saved = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        saved.append(rng_state(CPU))
    expected = [draws() for _ in range(2)]
    for rank in (0, 1):
        restore_rng_state(saved, DistContext(rank, 3, CPU), seed=3, step=6)
        assert draws() == (torch.manual_seed(10 + rank), draws())[1]
    streams = []
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            restore_rng_state(saved, DistContext(2, 3, CPU), seed=3, step=6)
            streams.append(draws())
    assert streams[0] == streams[1] and streams[0] not in expected
    assert "rank 2: no saved random state for it (saved by 2 ranks)" in caplog.text
    restore_rng_state(saved, DistContext(2, 3, CPU), seed=3, step=7)
    assert draws() != streams[0]  # another step, another stream
