"""What only a GPU can show: training steps on CUDA compute the CPU's losses, the batches of the
feature cache are staged in pinned memory and arrive on the GPU intact, decoding on CUDA gives
the CPU's captions, and ``common.precision: auto`` resolves on this GPU by its compute
capability. Marked ``cuda``: skipped, with the reason, where torch sees no GPU (tests/conftest.py);
``make gpu-check`` runs them (docs/gpu-check.md)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.integration.test_ddp import MODEL
from tests.unit.decoding import tiny_models as tiny
from tests.unit.decoding.tiny_models import train_tiny_soft_attention
from tests.unit.training.test_sources import (  # noqa: F401  (cache_dir: the cache fixture)
    cache_dir,
    epoch,
    in_ram_batches,
    opened,
)

from captioning.config import TrainConfig
from captioning.decoding.search import beam_search, greedy_search
from captioning.devices import autocast, resolve_precision
from captioning.features.cache import FeatureRows
from captioning.models import build_decoder
from captioning.training.distributed import DistContext
from captioning.training.loop import grad_scaler, optimizer_step
from captioning.training.objectives import TeacherForcing
from captioning.training.sources import Batch

pytestmark = pytest.mark.cuda

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
VOCAB, LOCATIONS, CHANNELS = 40, 49, 32


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 products in fp32, not TF32 (which a CUDA device may be set to use)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def tiny_decoder() -> torch.nn.Module:
    """Without dropout: CUDA draws its masks from another generator than the CPU's."""
    torch.manual_seed(0)
    return build_decoder(
        "soft_attention", MODEL, vocab_size=VOCAB, feature_dim=CHANNELS, num_locations=LOCATIONS
    )


def steps_losses(decoder: torch.nn.Module, device: torch.device, steps: int = 6) -> list[float]:
    """The loop's step (objective under autocast, optimizer_step with its scaler), fp32."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(8, LOCATIONS, CHANNELS, generator=generator).half()
    captions = torch.randint(3, VOCAB, (8, 12), generator=generator)
    captions[:, 0] = 1
    batch = Batch(captions.to(device), torch.arange(8, device=device), features.to(device))
    decoder = decoder.to(device).train()
    params = list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    objective, ctx = TeacherForcing(TrainConfig().scheduled_sampling), DistContext(0, 1, device)
    losses = []
    for step in range(steps):
        with autocast(device, "fp32"):
            loss = objective(decoder, batch, step, ctx).loss
        optimizer_step(loss, params, optimizer, scheduler, grad_scaler(device, "fp32"), 5.0)
        losses.append(float(loss.detach()))
    return losses


def test_training_steps_on_cuda_compute_the_cpus_losses(exact_fp32):
    decoder = tiny_decoder()
    on_cpu = steps_losses(copy.deepcopy(decoder), CPU)
    on_cuda = steps_losses(decoder, CUDA)
    assert on_cuda == pytest.approx(on_cpu, rel=1e-4)
    assert on_cpu[-1] < on_cpu[0] - 0.1  # the steps learnt: the comparison is not of constants


def test_cached_batches_are_staged_pinned_and_arrive_intact(cache_dir, monkeypatch):  # noqa: F811
    """The rows of each batch are read into pinned memory (the copy to the GPU is then
    asynchronous) and reach the GPU as they are in the cache."""
    staged = []
    read = FeatureRows.__getitem__

    def recording(self, rows):
        rows_read = read(self, rows)
        staged.append(rows_read.is_pinned())
        return rows_read

    monkeypatch.setattr(FeatureRows, "__getitem__", recording)
    ctx = DistContext(0, 1, CUDA)
    source = opened(cache_dir, ctx)
    state = epoch(source)
    got = list(source.batches(state, np.random.default_rng(0)))
    want = list(in_ram_batches(source, state, ctx))
    assert staged and all(staged)
    for batch, (x, captions, rows) in zip(got, want, strict=True):
        assert batch.inputs.device.type == "cuda" and batch.captions.device.type == "cuda"
        assert torch.equal(batch.inputs.cpu(), x)
        assert torch.equal(batch.captions.cpu(), captions) and torch.equal(batch.rows.cpu(), rows)


def test_decoding_on_cuda_gives_the_cpus_captions(exact_fp32):
    """A tiny model trained to read synthetic captions (peaked distributions: no near-ties)."""
    decoder = train_tiny_soft_attention()
    features = torch.randn(
        64, tiny.LOCATIONS, tiny.CHANNELS, generator=torch.Generator().manual_seed(2)
    )
    search = dict(start_id=tiny.START, end_id=tiny.END, max_length=tiny.LOCATIONS + 1)
    on_cpu = greedy_search(decoder, features, **search)
    beams_cpu = beam_search(decoder, features, beam_size=3, **search)
    on_gpu = decoder.to(CUDA)
    greedy = greedy_search(on_gpu, features.to(CUDA), **search)
    beams = beam_search(on_gpu, features.to(CUDA), beam_size=3, **search)
    assert [h.tokens for h in greedy] == [h.tokens for h in on_cpu]
    assert [h.tokens for h in beams] == [h.tokens for h in beams_cpu]
    assert [h.score for h in beams] == pytest.approx([h.score for h in beams_cpu], abs=1e-4)
    # The model reads them (chance is below 1 %): the captions compared are not noise.
    read = [h.tokens == want for h, want in zip(greedy, expected_words(features), strict=True)]
    assert sum(read) / len(read) > 0.1


def expected_words(features: torch.Tensor) -> list[list[int]]:
    captions = tiny.synthetic_captions(features)[:, 1:]
    return [[int(w) for w in row if w not in (tiny.PAD, tiny.END)] for row in captions]


def test_auto_precision_follows_the_compute_capability():
    """bf16 where the GPU has bf16 arithmetic (8.0+), fp16 with loss scaling on older GPUs,
    where torch would only emulate bf16."""
    major, _ = torch.cuda.get_device_capability()
    assert resolve_precision("auto", CUDA) == ("bf16" if major >= 8 else "fp16")
    assert grad_scaler(CUDA, resolve_precision("auto", CUDA)).is_enabled() == (major < 8)
