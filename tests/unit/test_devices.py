"""Device choice and the mixed-precision dtype per device."""

from __future__ import annotations

import contextlib

import pytest
import torch

from captioning import devices
from captioning.training.loop import grad_scaler

CUDA = torch.device("cuda")


def fake_gpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> None:
    """A GPU that has bf16 arithmetic (native) or one where torch only emulates it: the
    default ``is_bf16_supported()`` says yes for both."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize(("native_bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_a_gpu_autocasts_in_bf16_only_where_it_has_bf16_arithmetic(monkeypatch, native_bf16, dtype):
    fake_gpu(monkeypatch, native_bf16=native_bf16)
    assert devices.autocast_dtype(CUDA) == dtype


@pytest.mark.parametrize("native_bf16", [True, False])
def test_training_scales_the_loss_exactly_when_autocast_runs_in_fp16(monkeypatch, native_bf16):
    fake_gpu(monkeypatch, native_bf16=native_bf16)
    scaling: list[bool] = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: scaling.append(enabled))
    grad_scaler(CUDA)
    assert scaling == [not native_bf16]


def test_the_cpu_runs_fp32_without_autocast_or_loss_scaling():
    cpu = torch.device("cpu")
    assert devices.autocast_dtype(cpu) is None
    assert isinstance(devices.autocast(cpu), contextlib.nullcontext)
    assert not grad_scaler(cpu).is_enabled()


def test_asking_for_cuda_without_it_fails_at_the_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.choose_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        devices.choose_device("cuda:1")
