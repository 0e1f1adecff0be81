"""The process group is left however a training run ends (a failed rank's peers then fail
instead of waiting for it in a collective)."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from captioning.training.distributed import leaves_process_group


class Failed(Exception):
    pass


@pytest.fixture
def one_rank_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_leaves_the_process_group_however_it_ends(one_rank_group, fails):
    @leaves_process_group
    def run() -> str:
        assert dist.is_initialized()
        if fails:
            raise Failed
        return "done"

    if fails:
        with pytest.raises(Failed):
            run()
    else:
        assert run() == "done"
    assert not dist.is_initialized()
