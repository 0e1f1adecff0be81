"""Device choice, and common.precision resolved against the device's arithmetic."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from captioning import devices
from captioning.config import CommonConfig, ConfigError
from captioning.training.loop import grad_scaler

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def fake_gpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> None:
    """A GPU that has bf16 arithmetic (compute capability 8.0+) or one where torch only
    emulates it (7.5): the default ``is_bf16_supported()`` says yes for both."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def fake_cpu(monkeypatch: pytest.MonkeyPatch, *, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "resolved"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_auto_on_the_cpu_is_bf16_only_with_bf16_arithmetic(monkeypatch, avx512_bf16, amx, resolved):
    fake_cpu(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert devices.resolve_precision("auto", CPU) == resolved


@pytest.mark.parametrize(("native_bf16", "resolved"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_from_capability_8_and_fp16_before(
    monkeypatch, native_bf16, resolved
):
    fake_gpu(monkeypatch, native_bf16=native_bf16)
    assert devices.resolve_precision("auto", CUDA) == resolved


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("setting", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_on_a_gpu(monkeypatch, native_bf16, setting):
    fake_gpu(monkeypatch, native_bf16=native_bf16)
    assert devices.resolve_precision(setting, CUDA) == setting


def test_fp16_on_the_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError) as caught:
        devices.resolve_precision("fp16", CPU)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("common.precision: fp16 needs a CUDA device")
    assert "use bf16 or fp32" in message


def test_bf16_on_a_cpu_without_bf16_arithmetic_runs_with_a_warning(monkeypatch, caplog):
    fake_cpu(monkeypatch, avx512_bf16=False)
    with caplog.at_level(logging.WARNING, logger="captioning.devices"):
        assert devices.resolve_precision("bf16", CPU) == "bf16"
    assert "emulates it" in caplog.text
    caplog.clear()
    fake_cpu(monkeypatch, avx512_bf16=True)
    with caplog.at_level(logging.WARNING, logger="captioning.devices"):
        assert devices.resolve_precision("bf16", CPU) == "bf16"
    assert not caplog.text


def test_without_torchs_checks_the_cpu_flags_decide(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not devices.cpu_has_native_bf16()
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert devices.cpu_has_native_bf16()


def test_an_unknown_precision_is_refused_by_the_config_and_the_resolver():
    with pytest.raises(ConfigError, match="precision"):
        CommonConfig(precision="fp8")
    with pytest.raises(ConfigError, match="fp8"):
        devices.resolve_precision("fp8", CPU)


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_autocast_runs_in_the_resolved_dtype(precision, dtype):
    context = devices.autocast(CPU, precision)  # the same dtypes as on a GPU
    assert isinstance(context, torch.autocast) and context.fast_dtype == dtype
    with context:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype


@pytest.mark.parametrize(
    ("precision", "scaled"), [("fp16", True), ("bf16", False), ("fp32", False)]
)
def test_training_scales_the_loss_exactly_when_autocast_runs_in_fp16(
    monkeypatch, precision, scaled
):
    scaling: list[bool] = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: scaling.append(enabled))
    grad_scaler(CUDA, precision)
    assert scaling == [scaled]


def test_fp32_adds_no_autocast_and_no_loss_scaling():
    assert isinstance(devices.autocast(CPU, "fp32"), contextlib.nullcontext)
    assert isinstance(devices.autocast(CUDA, "fp32"), contextlib.nullcontext)
    assert not grad_scaler(CPU, "fp32").is_enabled()


def test_asking_for_cuda_without_it_fails_at_the_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.choose_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        devices.choose_device("cuda:1")
