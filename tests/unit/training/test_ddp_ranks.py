"""Data-parallel training on 2 gloo ranks (the CPU): each rank draws its own dropout masks,
and a run killed mid-epoch resumes from rank 0's checkpoint alone to the uninterrupted run's
weights, its ranks' random streams restored; the 2-rank checkpoint resumes in one process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_loop import (
    CFG,
    assert_same_weights,
    train,
    weights,
    workspace,  # noqa: F401  (the tiny feature cache)
)

from captioning.config import ScheduledSamplingConfig, to_dict

WORKER = Path(__file__).with_name("ddp_ranks_worker.py")
REPO = Path(__file__).resolve().parents[3]
# 8 images, one per rank per step: 4 steps per epoch, 8 in all; a checkpoint every 3 steps (the
# kill after step 7 resumes from step 6's, inside epoch 2). Dropout (the default's) and
# scheduled sampling draw from the ranks' streams.
DDP = dataclasses.replace(
    CFG,
    epochs=2,
    scheduled_sampling=ScheduledSamplingConfig(schedule="linear", k=1.0, c=0.1),
    checkpoint_every_steps=3,
    checkpoint_every_minutes=0.0,
    log_every_steps=1,
)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ddp_runs(workspace):  # noqa: F811
    """Both ranks' reports (ddp_ranks_worker.py) and the workspace."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
    }
    args = [sys.executable, str(WORKER), str(workspace), json.dumps(to_dict(DDP))]
    args += [str(p) for p in free_ports(3)]
    ranks = [
        subprocess.Popen(
            args,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        errors = [rank.communicate(timeout=300)[1] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    for rank, stderr in zip(ranks, errors, strict=True):
        assert rank.returncode == 0, stderr[-3000:]
    reports = [json.loads((workspace / f"ddp_result_rank{r}.json").read_text()) for r in (0, 1)]
    return workspace, reports


def test_ranks_draw_their_own_dropout_masks(ddp_runs):
    _, (rank0, _) = ddp_runs
    mask0, mask1 = rank0["masks"]
    assert mask0 != mask1
    # rank 0 goes on with the stream of the seed: a single process draws as it always did
    torch.manual_seed(7)
    assert torch.nn.functional.dropout(torch.ones(64), p=0.5).bool().tolist() == mask0


def test_the_checkpoint_holds_each_ranks_random_state(ddp_runs):
    root, _ = ddp_runs
    saved = torch.load(root / "two_rank_last.pt", map_location="cpu", weights_only=True)
    assert json.loads(saved["loop"])["step"] == 6
    states = [rank["cpu"] for rank in saved["rank_rng"]]
    assert len(states) == 2 and not torch.equal(*states)


def test_killed_run_resumes_from_rank_0s_checkpoint_to_the_uninterrupted_weights(ddp_runs):
    """Rank 1's checkpoint directory never had the file: it resumes from rank 0's, broadcast."""
    root, (rank0, rank1) = ddp_runs
    assert rank0["rank0_had_checkpoint"] and not rank1["rank1_had_checkpoint"]
    assert rank0["rank0_resumed_steps"] == rank1["rank1_resumed_steps"] == [7, 8]
    # The last epoch's val loss is the final weights' (the model holds the best epoch's).
    assert rank0["resumed_history"] == rank0["reference_history"]
    assert_same_weights(weights(root, "reference"), weights(root, "resumed"))


def test_a_two_rank_checkpoint_resumes_in_one_process(ddp_runs, caplog):
    root, _ = ddp_runs
    checkpoint_dir = root / "checkpoints" / "one_process"
    checkpoint_dir.mkdir(parents=True)
    (checkpoint_dir / "last.pt").write_bytes((root / "two_rank_last.pt").read_bytes())
    steps: list[int] = []
    with caplog.at_level("INFO"):
        train(root, "one_process", DDP, on_step=lambda i, r: steps.append(i))
    assert steps == [7, 8]
    assert "resuming from" in caplog.text
    assert weights(root, "one_process").keys() == weights(root, "reference").keys()
