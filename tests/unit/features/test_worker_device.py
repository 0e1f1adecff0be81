"""Which GPU a Dask feature worker encodes on."""

from __future__ import annotations

from types import SimpleNamespace

import distributed
import pytest
import torch

from captioning.config import ConfigError
from captioning.features.distributed import worker_device


def gpus(monkeypatch: pytest.MonkeyPatch, count: int, worker_name) -> list[torch.device]:
    """Pretend CUDA has ``count`` GPUs and this is Dask worker ``worker_name``; record
    ``set_device`` calls."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(distributed, "get_worker", lambda: SimpleNamespace(name=worker_name))
    return current


@pytest.mark.parametrize(("name", "index"), [(0, 0), (1, 1), (2, 0), (5, 1)])
def test_local_cluster_workers_spread_over_the_gpus(monkeypatch, name, index):
    current = gpus(monkeypatch, 2, name)
    assert worker_device() == torch.device("cuda", index)
    assert current == [torch.device("cuda", index)]


def test_one_gpu_or_none_needs_no_worker_index(monkeypatch):
    gpus(monkeypatch, 1, "tcp://10.0.0.5:4000")
    assert worker_device() == torch.device("cuda")
    gpus(monkeypatch, 0, 0)
    assert worker_device() == torch.device("cpu")


def test_a_hand_started_worker_uses_the_first_gpu_it_sees(monkeypatch, caplog):
    gpus(monkeypatch, 4, "tcp://10.0.0.5:4000")
    assert worker_device() == torch.device("cuda", 0)
    assert "not a LocalCluster index, using cuda:0 of 4 GPUs" in caplog.text


@pytest.mark.parametrize(("setting", "device"), [("cuda:1", ("cuda", 1)), ("cpu", ("cpu",))])
def test_a_device_setting_puts_every_worker_on_it(monkeypatch, setting, device):
    """common.device cuda:N: every worker on that GPU (the current one); cpu: none on a GPU."""
    current = gpus(monkeypatch, 2, 0)
    assert worker_device(setting) == torch.device(*device)
    assert current == ([torch.device(*device)] if device[0] == "cuda" else [])


def test_a_worker_demanding_cuda_without_it_fails_in_one_line(monkeypatch):
    gpus(monkeypatch, 0, 0)
    with pytest.raises(ConfigError, match="^common.device: 'cuda' requested but CUDA is not"):
        worker_device("cuda")
