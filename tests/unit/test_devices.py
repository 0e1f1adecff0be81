"""Device choice, and common.precision resolved against the device's arithmetic."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace

import pytest
import torch

from captioning import devices
from captioning.config import CommonConfig, ConfigError
from captioning.training.distributed import check_device_setting, init_distributed
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


@pytest.fixture
def tf32_off():
    """The CUDA TF32 flags off for the test, restored after it (monkeypatch cannot: torch's
    cuBLAS module answers its attributes from C)."""
    saved = tf32_flags()
    set_tf32(False, False)
    yield
    set_tf32(*saved)


def set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def gpu_of_capability(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], count=1):
    """CUDA answering as a GPU of ``capability`` would, down to what torch's own
    ``is_bf16_supported`` reads (its properties; bf16 tensors, emulated or not, work)."""
    current: list[torch.device] = []
    major, minor = capability
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    properties = SimpleNamespace(major=major, minor=minor)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    return current


@pytest.mark.parametrize(
    ("gpu", "capability", "precision", "scaled"),
    [
        ("A100", (8, 0), "bf16", False),
        ("H100", (9, 0), "bf16", False),
        ("V100", (7, 0), "fp16", True),
        ("T4", (7, 5), "fp16", True),
    ],
)
def test_the_precision_rule_on_a_gpu(monkeypatch, tf32_off, gpu, capability, precision, scaled):
    gpu_of_capability(monkeypatch, capability)
    assert torch.cuda.is_bf16_supported()  # torch's default answer: yes, emulated or not
    device = devices.choose_device("auto")
    assert device == torch.device("cuda")
    assert devices.resolve_precision("auto", device) == precision
    assert grad_scaler(device, precision).is_enabled() is scaled
    assert tf32_flags() == (True, True)  # a CUDA device was chosen


def test_the_precision_rule_without_cuda(monkeypatch, tf32_off):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_cpu(monkeypatch, avx512_bf16=False)  # this machine's CPU: no bf16 arithmetic
    device = devices.choose_device("auto")
    assert device == CPU
    assert devices.resolve_precision("auto", device) == "fp32"
    assert not grad_scaler(device, "fp32").is_enabled()
    assert tf32_flags() == (False, False)  # the CPU's arithmetic is left alone


@pytest.mark.parametrize("setting", ["cuda", "cuda:0"])
def test_demanding_cuda_without_it_is_one_line_naming_the_setting(monkeypatch, setting):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        devices.choose_device(setting)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"common.device: {setting!r} requested but CUDA is not available")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda' requested"):
        devices.choose_device("cuda", setting="--device")


def test_cuda_n_must_be_a_visible_gpu_and_becomes_the_current_one(monkeypatch, tf32_off):
    current = gpu_of_capability(monkeypatch, (8, 0), count=2)
    assert devices.choose_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    assert tf32_flags() == (True, True)
    with pytest.raises(ConfigError, match=r"'cuda:2' requested but 2 CUDA device\(s\) are visible"):
        devices.choose_device("cuda:2")


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "cpu\n", "mps"])
def test_a_bad_device_value_is_refused_by_the_config_and_the_chooser(value):
    with pytest.raises(ConfigError) as caught:
        CommonConfig(device=value)
    assert str(caught.value) == (
        f"key 'device': expected auto, cpu, cuda or cuda:N, found {value!r}"
    )
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        devices.choose_device(value)


def test_the_cpu_setting_stays_on_the_cpu_where_there_is_a_gpu(monkeypatch, tf32_off):
    gpu_of_capability(monkeypatch, (8, 0))
    assert devices.choose_device("cpu") == CPU
    assert tf32_flags() == (False, False)


def test_one_gpu_named_for_several_training_processes_is_one_line(monkeypatch):
    gpu_of_capability(monkeypatch, (8, 0), count=2)
    with pytest.raises(ConfigError) as caught:
        check_device_setting("cuda:1", 2)
    assert str(caught.value) == (
        "common.device: 'cuda:1' names one GPU but train.devices runs 2 processes, one per GPU "
        "(cuda:LOCAL_RANK); use cuda or auto"
    )
    assert check_device_setting("cuda:1", 1) == torch.device("cuda", 1)
    assert check_device_setting("cuda", 2) == torch.device("cuda")


def test_a_torchrun_rank_demanding_cuda_without_it_fails_before_joining(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail())
    with pytest.raises(ConfigError, match="^common.device: 'cuda' requested but CUDA is not"):
        init_distributed("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu").device == CPU
