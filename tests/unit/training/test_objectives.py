"""The masked cross-entropy and the teacher-forcing objective, on a tiny decoder."""

from __future__ import annotations

import math

import pytest
import torch

from captioning.config import DecoderConfig, ScheduledSamplingConfig
from captioning.models import build_decoder
from captioning.training.distributed import DistContext
from captioning.training.objectives import (
    PAD_ID,
    TeacherForcing,
    caption_loss,
    masked_cross_entropy,
)
from captioning.training.sources import Batch

SINGLE = DistContext(0, 1, torch.device("cpu"))


def test_padding_adds_nothing_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[2, 3, PAD_ID], [4, PAD_ID, PAD_ID]])
    log_p = torch.log_softmax(logits, dim=-1)
    real = [-log_p[0, 0, 2], -log_p[0, 1, 3], -log_p[1, 0, 4]]
    assert float(masked_cross_entropy(logits, targets, reduction="sum")) == pytest.approx(
        float(sum(real))
    )
    assert float(masked_cross_entropy(logits, targets)) == pytest.approx(float(sum(real)) / 3)
    # Whatever the logits at padded positions, the loss is the same.
    changed = logits.clone()
    changed[1, 1:] = 100.0
    assert torch.equal(
        masked_cross_entropy(changed, targets), masked_cross_entropy(logits, targets)
    )


def tiny_batch() -> tuple[torch.nn.Module, Batch]:
    torch.manual_seed(0)
    cfg = DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, feature_proj_dim=8)
    decoder = build_decoder("soft_attention", cfg, vocab_size=9, feature_dim=6, num_locations=4)
    captions = torch.tensor([[1, 5, 6, 2], [1, 7, 2, PAD_ID], [1, 8, 2, PAD_ID]])
    return decoder, Batch(captions, torch.tensor([0, 0, 1]), torch.randn(2, 4, 6))


def test_teacher_forcing_is_the_caption_loss_at_the_schedules_probability():
    decoder, batch = tiny_batch()
    decoder.eval()  # no dropout: the two computations see the same network
    schedule = ScheduledSamplingConfig(schedule="linear", k=1.0, c=0.1)
    step = TeacherForcing(schedule)(decoder, batch, 0, SINGLE)
    assert step.captions == 3 and step.sample_prob == 0.0
    expected = caption_loss(decoder, batch.features(), batch.captions, batch.rows)
    assert torch.equal(step.loss, expected)
    assert TeacherForcing(schedule)(decoder, batch, 4, SINGLE).sample_prob == pytest.approx(0.4)


def test_the_features_are_computed_when_the_objective_asks():
    """A trained encoder runs inside the objective (under autocast, in the loss's graph)."""
    decoder, batch = tiny_batch()
    calls = []

    def encode(images):
        calls.append(images.shape)
        return images * 2

    lazy = Batch(batch.captions, batch.rows, batch.inputs, encode)
    assert not calls
    loss = TeacherForcing(ScheduledSamplingConfig())(decoder, lazy, 0, SINGLE).loss
    assert calls == [torch.Size([2, 4, 6])] and math.isfinite(loss.item())
